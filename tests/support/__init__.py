"""Helpers shared by the test tiers: databases, timeouts, a running server."""
