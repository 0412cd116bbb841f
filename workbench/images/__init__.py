"""Builds the project's images offline: the Debian base, then the algorithms FROM it."""
