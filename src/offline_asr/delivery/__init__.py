"""Delivery: offline bundles (build, sign, install), the environment check and pack, doctor."""
