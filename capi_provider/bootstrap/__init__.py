"""Turning CAPI bootstrap data into what a bare-metal host boots with (a cloud-init NoCloud seed)."""
