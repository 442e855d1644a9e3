"""Offline bundles: build, sign, encrypt, verify, install atomically, roll back."""
