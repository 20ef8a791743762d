"""PRFs, key block and Finished verify_data (protocol.md §7.4).

These run once per handshake, so clarity beats speed here.  Only
`cryptography` primitives are used.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes, hmac

from loadgen.proto.dtls.ciphers import CipherSpec, PrfHash

__all__ = [
    "KeyBlock",
    "derive_key_block",
    "finished_verify_data",
    "p_hash",
    "prf",
    "prf_tls10",
    "transcript_hash",
]

MASTER_SECRET_LEN = 48
VERIFY_DATA_LEN = 12
LABEL_KEY_EXPANSION = b"key expansion"
LABEL_CLIENT_FINISHED = b"client finished"
LABEL_SERVER_FINISHED = b"server finished"


def _hash_algorithm(name: str) -> hashes.HashAlgorithm:
    return {"md5": hashes.MD5(), "sha1": hashes.SHA1(), "sha256": hashes.SHA256()}.get(
        name, hashes.SHA384()
    )


def _hmac(algorithm: hashes.HashAlgorithm, key: bytes, data: bytes) -> bytes:
    mac = hmac.HMAC(key, algorithm)
    mac.update(data)
    return mac.finalize()


def p_hash(algorithm: hashes.HashAlgorithm, secret: bytes, seed: bytes, length: int) -> bytes:
    """RFC 5246 §5: A(0) = seed, A(i) = HMAC(secret, A(i-1)), out = HMAC(secret, A(i) || seed)..."""
    out = bytearray()
    a = seed
    while len(out) < length:
        a = _hmac(algorithm, secret, a)
        out += _hmac(algorithm, secret, a + seed)
    return bytes(out[:length])


def prf_tls10(secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """TLS 1.0 PRF: P_MD5(S1) xor P_SHA1(S2), halves overlapping for odd lengths (RFC 2246 §5)."""
    half = (len(secret) + 1) // 2
    s1, s2 = secret[:half], secret[len(secret) - half :]
    md5 = p_hash(hashes.MD5(), s1, label + seed, length)
    sha = p_hash(hashes.SHA1(), s2, label + seed, length)
    return bytes(x ^ y for x, y in zip(md5, sha, strict=True))


def prf(prf_hash: PrfHash, secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """The PRF of a suite: TLS 1.0 for DTLS 0.9, P_SHA256 / P_SHA384 for DTLS 1.2."""
    if prf_hash is PrfHash.MD5_SHA1:
        return prf_tls10(secret, label, seed, length)
    return p_hash(_hash_algorithm(prf_hash.value), secret, label + seed, length)


def transcript_hash(prf_hash: PrfHash, messages: Iterable[bytes]) -> bytes:
    """MD5(T) || SHA1(T) for the TLS 1.0 PRF, else the suite hash of T."""
    names = ("md5", "sha1") if prf_hash is PrfHash.MD5_SHA1 else (prf_hash.value,)
    digests = [hashes.Hash(_hash_algorithm(n)) for n in names]
    for message in messages:
        for digest in digests:
            digest.update(message)
    return b"".join(digest.finalize() for digest in digests)


def finished_verify_data(
    spec: CipherSpec, master_secret: bytes, *, from_server: bool, messages: Iterable[bytes]
) -> bytes:
    """verify_data = PRF(master, "server|client finished", Hash(transcript))[:12]."""
    label = LABEL_SERVER_FINISHED if from_server else LABEL_CLIENT_FINISHED
    digest = transcript_hash(spec.prf_hash, messages)
    return prf(spec.prf_hash, master_secret, label, digest, VERIFY_DATA_LEN)


@dataclass(frozen=True, kw_only=True)
class KeyBlock:
    """The parts of the key block a legacy suite uses (§7.4); secrets are not in the repr."""

    client_write_mac_key: bytes = field(repr=False)
    server_write_mac_key: bytes = field(repr=False)
    client_write_key: bytes = field(repr=False)
    server_write_key: bytes = field(repr=False)
    client_write_salt: bytes = field(repr=False)
    server_write_salt: bytes = field(repr=False)


def derive_key_block(
    spec: CipherSpec, master_secret: bytes, *, client_random: bytes, server_random: bytes
) -> KeyBlock:
    """PRF(master, "key expansion", server_random || client_random), split in order."""
    block = prf(
        spec.prf_hash,
        master_secret,
        LABEL_KEY_EXPANSION,
        server_random + client_random,
        spec.key_block_len,
    )
    parts: list[bytes] = []
    offset = 0
    for size in (
        spec.mac_key_len,
        spec.mac_key_len,
        spec.enc_key_len,
        spec.enc_key_len,
        spec.salt_len,
        spec.salt_len,
    ):
        parts.append(block[offset : offset + size])
        offset += size
    return KeyBlock(
        client_write_mac_key=parts[0],
        server_write_mac_key=parts[1],
        client_write_key=parts[2],
        server_write_key=parts[3],
        client_write_salt=parts[4],
        server_write_salt=parts[5],
    )
