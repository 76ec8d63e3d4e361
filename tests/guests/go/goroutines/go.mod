module pyqemu.test/goroutines

go 1.19
