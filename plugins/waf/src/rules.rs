//! The built-in rule set: patterns for the attack classes of the OWASP Core Rule Set, written
//! for Sluice and matched against normalised (decoded, lower-case) values.
//!
//! Rule ids follow the Core Rule Set's numbering by class so that operators can read them at a
//! glance: 913 scanners, 920 protocol, 921 protocol attacks, 930 path traversal and file access,
//! 931 remote file inclusion, 932 command injection, 933 PHP, 934 Node.js, SSTI and SSRF,
//! 941 XSS, 942 SQL injection, 944 Java. Each rule has a paranoia level: level 1 aims at no false
//! alarms on ordinary traffic, higher levels catch more and need tuning.

use crate::request::Place;

/// How much a match adds to the anomaly score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// 5 points: on its own enough to block at the default threshold.
    Critical,
    /// 4 points.
    Error,
    /// 3 points.
    Warning,
    /// 2 points.
    Notice,
}

impl Severity {
    /// Its anomaly score.
    pub fn score(self) -> u32 {
        match self {
            Self::Critical => 5,
            Self::Error => 4,
            Self::Warning => 3,
            Self::Notice => 2,
        }
    }
}

/// A rule written in this file.
#[derive(Debug, Clone, Copy)]
pub struct BuiltIn {
    /// Its id.
    pub id: u32,
    /// What it detects.
    pub message: &'static str,
    /// Its weight.
    pub severity: Severity,
    /// The least paranoia level that runs it.
    pub paranoia: u8,
    /// Where it looks.
    pub places: &'static [Place],
    /// For headers: which ones (empty: all inspected headers).
    pub headers: &'static [&'static str],
    /// The pattern, over normalised values.
    pub pattern: &'static str,
}

use Place::{Arg, ArgName, Body, Cookie, Header, Path};
use Severity::{Critical, Notice, Warning};

const INPUT: &[Place] = &[Arg, ArgName, Cookie, Body, Header];
const INPUT_AND_PATH: &[Place] = &[Arg, ArgName, Cookie, Body, Header, Path];
const ARGS: &[Place] = &[Arg, Cookie, Body];
/// Headers that carry user-supplied text worth checking for injections.
const TEXT_HEADERS: &[&str] = &["user-agent", "referer", "x-forwarded-host", "x-original-url", "x-rewrite-url"];

const SHELL_COMMANDS: &str = "cat|ls|id|whoami|uname|wget|curl|nc|ncat|netcat|bash|sh|zsh|ksh|dash|python[23]?|perl|php|ruby|\
    chmod|chown|rm|ping|nslookup|printenv|base64|xxd|awk|sed|telnet|socat|ifconfig|passwd|crontab|nohup|busybox|powershell|cmd";

/// The rule set.
pub fn built_in() -> Vec<BuiltIn> {
    let rule = |id, message, severity, paranoia, places, headers, pattern| BuiltIn {
        id,
        message,
        severity,
        paranoia,
        places,
        headers,
        pattern,
    };
    vec![
        // 913: security scanners announce themselves in User-Agent.
        rule(
            913100,
            "security scanner user agent",
            Critical,
            1,
            &[Header],
            &["user-agent"],
            r"\b(?:sqlmap|nikto|nmap|masscan|dirbuster|gobuster|wpscan|acunetix|nessus|openvas|w3af|zgrab|nuclei|havij|arachni|whatweb|hydra|feroxbuster|ffuf|jaeles|netsparker|appscan|webinspect|commix|xsstrike|wfuzz|skipfish|zmeu|morfeus|paros|sqlninja|fimap|dotdotpwn)\b",
        ),
        // 930: path traversal and access to well-known files.
        rule(930100, "path traversal", Critical, 1, INPUT_AND_PATH, &[], r"(?:^|[/\\=:])\.\.[/\\]|[/\\]\.\.$"),
        rule(
            930120,
            "access to an operating system or secrets file",
            Critical,
            1,
            INPUT_AND_PATH,
            &[],
            r"(?:etc/(?:passwd|shadow|group|hosts|issue|crontab|sudoers)\b|proc/self/(?:environ|cmdline|fd|maps)|boot\.ini|win\.ini|windows[/\\]system32|\.htaccess|\.htpasswd|\.ssh/(?:id_rsa|id_ed25519|authorized_keys)|\.aws/credentials|\.git/(?:config|head)\b|/\.env$|web\.config$|wp-config\.php)",
        ),
        rule(
            930130,
            "request for a backup or configuration file",
            Warning,
            2,
            &[Path],
            &[],
            r"\.(?:bak|old|orig|sql|swp|ini|log|conf|config|env|dist|save)$",
        ),
        // 931: remote file inclusion.
        rule(
            931100,
            "remote file inclusion: URL with an IP address",
            Critical,
            1,
            ARGS,
            &[],
            r"^(?:https?|ftps?)://\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}",
        ),
        rule(
            931120,
            "remote file inclusion: URL ending in a question mark",
            Critical,
            1,
            ARGS,
            &[],
            r"^(?:https?|ftps?)://[^\s]+\?+$",
        ),
        // 932: command injection.
        rule(932100, "unix command injection", Critical, 1, INPUT, TEXT_HEADERS, shell_command_pattern()),
        rule(
            932110,
            "windows command injection",
            Critical,
            1,
            INPUT,
            TEXT_HEADERS,
            r"\bcmd(?:\.exe)?\s*/[ck]\b|\bpowershell(?:\.exe)?\b.{0,40}\s-(?:e|en|enc|encodedcommand|c|command|nop|noprofile|w\s+hidden)\b|\b(?:net\s+user\s+\S+\s+/add|certutil(?:\.exe)?\s+-urlcache|bitsadmin(?:\.exe)?\s+/transfer|reg\s+add\s+hk)",
        ),
        rule(
            932160,
            "unix shell path or shell trick",
            Critical,
            1,
            INPUT,
            TEXT_HEADERS,
            r"/(?:usr/(?:local/)?)?s?bin/(?:ba|z|k|da)?sh\b|/bin/(?:cat|nc|ncat|busybox)\b|\$\{ifs\}|\$ifs\b|/dev/(?:tcp|udp)/",
        ),
        rule(932170, "shellshock", Critical, 1, &[Header, Arg, Cookie], &[], r"\(\s*\)\s*\{[^}]*;\s*\}\s*;"),
        // 933: PHP injection.
        rule(
            933100,
            "PHP open tag or stream wrapper",
            Critical,
            1,
            INPUT,
            &[],
            r"<\?(?:php\b|=)|\b(?:php|phar|zip|expect|glob|zlib|compress\.zlib|data)://",
        ),
        rule(
            933160,
            "PHP function call",
            Critical,
            1,
            ARGS,
            &[],
            r"\b(?:eval|assert|system|passthru|shell_exec|exec|popen|proc_open|pcntl_exec|base64_decode|gzinflate|str_rot13|create_function|call_user_func(?:_array)?|file_get_contents|file_put_contents|phpinfo|include|require|include_once|require_once)\s*\(",
        ),
        // 934 and 944: Node.js, template injection, SSRF, Java.
        rule(
            934100,
            "Node.js injection or prototype pollution",
            Critical,
            1,
            INPUT,
            &[],
            r"__proto__|constructor\s*(?:\.|\[\s*['\x22])\s*prototype|\bchild_process\b|\brequire\s*\(\s*['\x22`](?:child_process|fs|net|vm)['\x22`]\s*\)|\bprocess\.(?:mainmodule|binding)\b",
        ),
        rule(
            934110,
            "server-side request forgery target",
            Critical,
            1,
            ARGS,
            &[],
            r"169\.254\.169\.254|metadata\.google\.internal|\b(?:gopher|dict|ldap|tftp|file)://",
        ),
        rule(
            934115,
            "request for a local address",
            Warning,
            2,
            ARGS,
            &[],
            r"^(?:https?://)?(?:localhost|127\.\d+\.\d+\.\d+|\[?::1\]?|0\.0\.0\.0)(?:[:/]|$)",
        ),
        rule(
            934130,
            "server-side template injection",
            Critical,
            1,
            INPUT,
            &[],
            r"\{\{[^}]*(?:\d\s*\*\s*\d|config|self\b|request\b|__class__|__globals__|__import__|__builtins__|popen|\bos\.)[^}]*\}\}|\$\{\s*\d+\s*\*\s*\d+\s*\}|<%=?[^%]*%>|#\{\s*\d+\s*\*\s*\d+\s*\}",
        ),
        rule(
            944150,
            "JNDI lookup (Log4Shell)",
            Critical,
            1,
            INPUT_AND_PATH,
            &[],
            r"\$\{\s*(?:jndi\s*:|\$\{|lower\s*:|upper\s*:|env\s*:|sys\s*:|java\s*:|::-)",
        ),
        rule(
            944100,
            "Java code injection or deserialisation",
            Critical,
            1,
            INPUT,
            &[],
            r"java\.lang\.(?:runtime|processbuilder|class|system)\b|\.getruntime\s*\(|\bprocessbuilder\b|javax\.script|org\.apache\.commons\.collections|\bysoserial\b|\bro0ab[a-z0-9+/=]{8,}|\baced0005[0-9a-f]{8,}",
        ),
        // 941: cross-site scripting.
        rule(941110, "XSS: script tag", Critical, 1, INPUT_AND_PATH, TEXT_HEADERS, r"<script[\s>/]|</script\s*>"),
        rule(
            941120,
            "XSS: event handler attribute",
            Critical,
            1,
            INPUT_AND_PATH,
            TEXT_HEADERS,
            r#"(?:<[a-z][^>]*?|["'`/]\s*|\s)on(?:error|load|mouse\w+|focus\w*|blur|click|dblclick|key\w+|submit|change|input|toggle|animation\w+|transition\w+|pointer\w+|begin|end|start|finish|scroll|wheel|drag\w*|drop|copy|cut|paste|show|play|pause|message|hashchange|pageshow|resize|unload|beforeunload|select|invalid|reset|search|auxclick|contextmenu)\s*="#,
        ),
        rule(
            941170,
            "XSS: script URL",
            Critical,
            1,
            INPUT_AND_PATH,
            TEXT_HEADERS,
            r"(?:javascript|vbscript|livescript)\s*:|data\s*:\s*(?:text/html|image/svg\+xml|application/x?html)",
        ),
        rule(
            941160,
            "XSS: dangerous tag",
            Critical,
            1,
            INPUT_AND_PATH,
            TEXT_HEADERS,
            r"<\s*/?\s*(?:iframe|frame|frameset|object|embed|applet|meta|base|svg|math|isindex|xss|template|portal)\b",
        ),
        rule(
            941180,
            "XSS: DOM access or script call",
            Critical,
            1,
            INPUT,
            TEXT_HEADERS,
            r"\bdocument\s*\.\s*(?:cookie|domain|write|location)\b|\bwindow\s*\.\s*location\b|\b(?:alert|prompt|confirm)\s*(?:\(|`)|\.innerhtml\s*=|\bstring\.fromcharcode\s*\(|\beval\s*\(|\batob\s*\(",
        ),
        rule(
            941200,
            "XSS: CSS expression or binding",
            Critical,
            1,
            INPUT,
            &[],
            r"expression\s*\(|-moz-binding|behavior\s*:\s*url|@import\s+['\x22]?javascript",
        ),
        rule(
            941210,
            "XSS: script-capable attribute",
            Critical,
            1,
            INPUT,
            &[],
            r"\b(?:srcdoc|formaction|xlink:href)\s*=",
        ),
        rule(941300, "HTML tag in input", Notice, 2, ARGS, &[], r"<[a-z][a-z0-9]*(?:\s[^>]*)?/?>"),
        // 942: SQL injection.
        rule(
            942100,
            "SQL injection: tautology after a quote",
            Critical,
            1,
            INPUT,
            TEXT_HEADERS,
            r#"['"`]\s*\)*\s*(?:(?:or|and|xor)\b|\|\||&&)\s*\(*\s*(?:['"`]?\s*\w*\s*['"`]?\s*(?:=|<>|!=|<=?|>=?|\blike\b|\bis\b|\brlike\b|\bregexp\b)|true\b|false\b|not\b|\d)"#,
        ),
        rule(
            942110,
            "SQL injection: numeric tautology",
            Critical,
            1,
            ARGS,
            &[],
            r"(?:^|\s|\()\d*\s*(?:or|and|xor|\|\||&&)\s+\(*\s*(\d+)\s*(?:=|<>|!=|<|>)\s*\(*\s*\d+",
        ),
        rule(
            942120,
            "SQL injection: quote followed by a comment",
            Critical,
            1,
            INPUT,
            TEXT_HEADERS,
            r#"['"`]\s*\)*\s*(?:--|#|;\s*--)"#,
        ),
        rule(
            942130,
            "SQL injection: UNION SELECT",
            Critical,
            1,
            INPUT_AND_PATH,
            TEXT_HEADERS,
            r"\bunion\s*(?:all\s*|distinct\s*)?\(*\s*select\b",
        ),
        rule(
            942140,
            "SQL injection: stacked query",
            Critical,
            1,
            INPUT,
            TEXT_HEADERS,
            r"(?:;|['\x22`]\s*\)*\s*;)\s*(?:drop\s+(?:table|database|schema|user|view)\b|delete\s+from\b|insert\s+into\b|update\s+\w+\s+set\b|create\s+(?:table|user|database)\b|alter\s+(?:table|user)\b|truncate\s+table\b|exec(?:ute)?\s*(?:master|xp_|sp_|\()|shutdown\b|declare\s+@|grant\s+all\b|select\b)",
        ),
        rule(
            942150,
            "SQL injection: database function or system object",
            Critical,
            1,
            INPUT,
            TEXT_HEADERS,
            r"\b(?:sleep\s*\(\s*\d|benchmark\s*\(|pg_sleep\s*\(|waitfor\s+delay\s+['\x22]|extractvalue\s*\(|updatexml\s*\(|load_file\s*\(|into\s+(?:out|dump)file\b|information_schema\b|xp_cmdshell\b|sysobjects\b|sys\.(?:tables|user_tables|all_tables|objects)\b|utl_http\b|dbms_pipe\b|@@version\b|version\s*\(\s*\)|current_user\s*\(|database\s*\(\s*\)|pg_catalog\b|sqlite_master\b|mysql\.user\b)",
        ),
        rule(
            942160,
            "SQL injection: quote followed by SQL",
            Critical,
            1,
            INPUT,
            TEXT_HEADERS,
            r#"['"`]\s*\)*\s*(?:union\b|select\b|having\b|order\s+by\b|group\s+by\b|insert\b|delete\b|drop\b|exec\b)"#,
        ),
        rule(
            942170,
            "SQL injection: ORDER BY or HAVING probe",
            Critical,
            1,
            ARGS,
            &[],
            r"\border\s+by\s+\d+\s*(?:--|#|$)|\bhaving\s+\d+\s*=\s*\d+|\bgroup\s+by\s+\S+\s+having\b",
        ),
        rule(942200, "SQL keywords: SELECT ... FROM", Warning, 2, ARGS, &[], r"\bselect\b.{1,100}?\bfrom\b"),
        rule(
            942210,
            "SQL functions",
            Warning,
            2,
            ARGS,
            &[],
            r"\b(?:char|chr|concat|concat_ws|group_concat|substring|substr|ascii|hex|unhex|cast|convert|mid|ord)\s*\(",
        ),
        rule(942220, "SQL hex literal", Notice, 3, ARGS, &[], r"\b0x[0-9a-f]{8,}\b"),
        rule(942230, "SQL comment sequence", Notice, 3, ARGS, &[], r"(?:--\s*$|#\s*$|;\s*$)"),
    ]
}

/// The unix command pattern, built once from the command list.
fn shell_command_pattern() -> &'static str {
    use std::sync::OnceLock;
    static PATTERN: OnceLock<String> = OnceLock::new();
    PATTERN.get_or_init(|| {
        format!(r"(?:[;&|`\n]|\$\()\s*(?:\w+=\S*\s+)*(?:/(?:usr/)?(?:local/)?s?bin/)?(?:{SHELL_COMMANDS})\b")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_compiles_and_ids_are_unique() {
        let rules = built_in();
        let mut ids: Vec<u32> = rules.iter().map(|rule| rule.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), rules.len());
        for rule in rules {
            regex::bytes::Regex::new(&format!("(?-u){}", rule.pattern))
                .unwrap_or_else(|err| panic!("{}: {err}", rule.id));
        }
    }
}
