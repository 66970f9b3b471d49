"""Security primitives: mTLS contexts, the PKI (CA, certificates) and redaction of secrets. No mitmproxy."""
