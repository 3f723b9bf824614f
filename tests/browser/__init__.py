"""Browser tests: Label Studio's UI in Debian chromium (Playwright) against the real stack."""
