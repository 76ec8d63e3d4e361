"""pyqemu-img: QEMU's disk image utility, one module per subcommand."""
