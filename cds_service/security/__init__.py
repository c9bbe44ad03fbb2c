"""Security building blocks that are not HTTP views: the JWKS cache used by JWT verification."""
