import assert from 'node:assert/strict';
import { createHmac, createHash, randomBytes } from 'node:crypto';
import { test } from 'node:test';
import { hex, hmacSha256, sha256 } from '../src/hmac.js';

const text = (value) => new TextEncoder().encode(value);

test('SHA-256 matches the FIPS 180-4 examples', () => {
  assert.equal(hex(sha256(text('abc'))), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  assert.equal(hex(sha256(text(''))), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  const twoBlocks = text('abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq');
  assert.equal(hex(sha256(twoBlocks)), '248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1');
});

test('HMAC-SHA256 matches RFC 4231', () => {
  assert.equal(
    hex(hmacSha256(text('Jefe'), text('what do ya want for nothing?'))),
    '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843',
  );
  // Test case 6: a key longer than the block is hashed first.
  assert.equal(
    hex(hmacSha256(new Uint8Array(131).fill(0xaa), text('Test Using Larger Than Block-Size Key - Hash Key First'))),
    '60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54',
  );
});

test('agrees with node:crypto at every length around the block boundaries', () => {
  for (let length = 0; length < 200; length += 1) {
    const key = randomBytes(length % 70);
    const message = randomBytes(length);
    assert.equal(hex(sha256(message)), createHash('sha256').update(message).digest('hex'), `length ${length}`);
    assert.equal(hex(hmacSha256(key, message)), createHmac('sha256', key).update(message).digest('hex'));
  }
});
