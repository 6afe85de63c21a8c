"""OAuth2 bearer access tokens (JWT, RFC 9068) for the gateway's private routes."""
