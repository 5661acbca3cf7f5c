//! Scanning a body that arrives in chunks, so that a card number split across two chunks is
//! found as surely as one inside a chunk.
//!
//! The scanner holds back the last `hold` bytes of what it has seen (and any match that reaches
//! into them): a match that continues into the next chunk must start inside that tail, because
//! no match is longer than `hold`. The bytes it has already let go serve as left context, so
//! word boundaries at the cut read the same as in one piece.

use crate::detect::{Detector, Finding, Kind, mask};

/// How findings are handled.
#[derive(Debug, Clone, Copy)]
pub struct MaskStyle {
    /// The mask byte.
    pub mask: u8,
    /// Card digits left visible at the end.
    pub card_keep_last: usize,
}

/// A streaming scanner over one body.
#[derive(Debug)]
pub struct Scanner {
    hold: usize,
    pending: Vec<u8>,
    context: Vec<u8>,
}

/// Findings in everything scanned so far, by kind name.
pub type Counts = Vec<(String, usize)>;

/// Every detector's findings in `buffer`, sorted, overlaps merged into the first.
pub fn find_all(detectors: &[Detector], buffer: &[u8]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for detector in detectors {
        detector.find(buffer, &mut findings);
    }
    findings.sort_by_key(|finding| (finding.start, std::cmp::Reverse(finding.end)));
    let mut merged: Vec<Finding> = Vec::with_capacity(findings.len());
    for finding in findings {
        match merged.last_mut() {
            Some(last) if finding.start < last.end => last.end = last.end.max(finding.end),
            _ => merged.push(finding),
        }
    }
    merged
}

fn count(counts: &mut Counts, kind: Kind, detectors: &[Detector]) {
    let name = detectors.iter().find(|detector| detector.kind == kind).map_or(kind.name(), |detector| &detector.name);
    match counts.iter_mut().find(|(known, _)| known == name) {
        Some((_, count)) => *count += 1,
        None => counts.push((name.to_owned(), 1)),
    }
}

impl Scanner {
    /// A scanner for matches of at most `hold` bytes.
    pub fn new(hold: usize) -> Self {
        Self { hold, pending: Vec::new(), context: Vec::new() }
    }

    /// Takes the next chunk and returns the bytes that may go on, masked; at `end` everything
    /// held back goes too.
    pub fn push(
        &mut self,
        detectors: &[Detector],
        style: MaskStyle,
        chunk: &[u8],
        end: bool,
        counts: &mut Counts,
    ) -> Vec<u8> {
        let offset = self.context.len();
        let mut buffer = std::mem::take(&mut self.context);
        buffer.append(&mut self.pending);
        buffer.extend_from_slice(chunk);
        // Findings that start in the context were handled when those bytes went out.
        let findings: Vec<Finding> =
            find_all(detectors, &buffer).into_iter().filter(|finding| finding.start >= offset).collect();
        let mut cut = if end { buffer.len() } else { buffer.len().saturating_sub(self.hold).max(offset) };
        if let Some(crossing) = findings.iter().find(|finding| finding.start < cut && finding.end > cut) {
            cut = crossing.start;
        }
        for finding in findings.iter().filter(|finding| finding.end <= cut) {
            mask(&mut buffer[finding.start..finding.end], finding.kind, style.mask, style.card_keep_last);
            count(counts, finding.kind, detectors);
        }
        let out = buffer[offset..cut].to_vec();
        self.pending = buffer[cut..].to_vec();
        let context_start = cut.saturating_sub(self.hold);
        self.context = buffer[context_start..cut].to_vec();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detectors() -> Vec<Detector> {
        [Kind::Card, Kind::Ssn, Kind::Email, Kind::ApiKey].into_iter().map(Detector::built_in).collect()
    }

    const STYLE: MaskStyle = MaskStyle { mask: b'*', card_keep_last: 4 };

    fn in_chunks(text: &[u8], sizes: &[usize]) -> (Vec<u8>, Counts) {
        let detectors = detectors();
        let mut scanner = Scanner::new(crate::detect::LONGEST_BUILT_IN_MATCH);
        let mut out = Vec::new();
        let mut counts = Counts::new();
        let mut rest = text;
        let mut sizes = sizes.iter().cycle();
        while !rest.is_empty() {
            let take = (*sizes.next().unwrap()).min(rest.len());
            let (chunk, tail) = rest.split_at(take);
            rest = tail;
            out.extend(scanner.push(&detectors, STYLE, chunk, false, &mut counts));
        }
        out.extend(scanner.push(&detectors, STYLE, b"", true, &mut counts));
        (out, counts)
    }

    const BODY: &[u8] =
        b"{\"card\": \"4111 1111 1111 1111\", \"ssn\": \"123-45-6789\", \"mail\": \"jane@example.com\", \
        \"note\": \"order 123456789012 shipped\", \"key\": \"AKIAABCDEFGHIJKLMNOP\"}";
    const MASKED: &[u8] =
        b"{\"card\": \"**** **** **** 1111\", \"ssn\": \"***-**-****\", \"mail\": \"****@example.com\", \
        \"note\": \"order 123456789012 shipped\", \"key\": \"AKIA****************\"}";

    #[test]
    fn one_piece_masks_every_kind() {
        let (out, counts) = in_chunks(BODY, &[BODY.len()]);
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(MASKED));
        assert_eq!(counts.len(), 4);
    }

    #[test]
    fn every_split_point_gives_the_same_output() {
        for split in 1..BODY.len() {
            let (out, counts) = in_chunks(BODY, &[split, BODY.len()]);
            assert_eq!(out, MASKED, "split at {split}");
            assert_eq!(counts.iter().map(|(_, n)| n).sum::<usize>(), 4, "split at {split}");
        }
    }

    #[test]
    fn byte_by_byte_and_long_bodies() {
        let (out, _) = in_chunks(BODY, &[1]);
        assert_eq!(out, MASKED);
        // Far more than the hold-back between two findings.
        let mut long = b"4111111111111111 ".to_vec();
        long.extend(std::iter::repeat_n(b'x', 5000));
        long.extend(b" 5500 0000 0000 0004");
        let (out, counts) = in_chunks(&long, &[7, 300, 1]);
        assert!(out.starts_with(b"************1111 "));
        assert!(out.ends_with(b" **** **** **** 0004"));
        assert_eq!(out.len(), long.len());
        assert_eq!(counts, vec![("card".to_owned(), 2)]);
    }

    #[test]
    fn a_number_that_grows_past_a_card_in_the_next_chunk_is_left_alone() {
        // 16 valid digits, then more digits in the next chunk: one 20-digit number, not a card.
        let (out, counts) = in_chunks(b"id 41111111111111111234 end", &[19, 100]);
        assert_eq!(out, b"id 41111111111111111234 end");
        assert!(counts.is_empty());
    }
}
