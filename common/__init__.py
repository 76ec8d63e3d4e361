"""The shared layer under every pyqemu binary: block layer, option syntax, errors."""
