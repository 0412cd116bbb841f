"""Trust primitives: canonical JSON, Ed25519 keys and signatures, signed images, audit chains.

Each module is small and pure (files and ``cryptography`` only); see ``docs/trust.md``::

    canonical        RFC 8785 canonical JSON and its SHA-256
    keys             key pairs on disk, key ids, the TrustStore of accepted public keys
    signing          sign / verify a JSON object; seal / open_sealed for wire messages
    image_signature  cosign-style simple-signing signatures of algorithm images
    audit            the hash-chained, append-only JSON-lines audit log and its verifier
    pki              the consortium CA and the TLS certificates it issues
"""
