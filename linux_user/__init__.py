"""Linux user-mode emulation (not yet implemented)."""
