"""FreeBSD user-mode emulation (not yet implemented)."""
