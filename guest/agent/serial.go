package main

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// openSerial opens a tty in raw mode. Echo or CR/LF translation on the line
// would corrupt the JSON stream and feed our own output back to us.
func openSerial(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("cannot open serial device: %w", err)
	}
	// Not f.Fd(): it would switch the file to blocking mode, and then Close
	// could no longer interrupt a pending Read.
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("cannot reach serial device: %w", err)
	}
	var rawErr error
	if err := rc.Control(func(fd uintptr) { rawErr = makeRaw(int(fd)) }); err != nil {
		rawErr = err
	}
	if rawErr != nil {
		f.Close()
		return nil, fmt.Errorf("cannot set %s to raw mode: %w", path, rawErr)
	}
	return f, nil
}

// makeRaw is cfmakeraw(3) plus 8N1, no flow control and 115200 baud (v86
// ignores the speed, a real UART would not).
func makeRaw(fd int) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return fmt.Errorf("cannot read termios: %w", err)
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON | unix.IXOFF | unix.IXANY
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB | unix.CSTOPB | unix.CRTSCTS | unix.CBAUD
	t.Cflag |= unix.CS8 | unix.CREAD | unix.CLOCAL | unix.B115200
	t.Ispeed = unix.B115200
	t.Ospeed = unix.B115200
	// Block until at least one byte arrives, with no inter-byte timer.
	t.Cc[unix.VMIN] = 1
	t.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, t); err != nil {
		return fmt.Errorf("cannot write termios: %w", err)
	}
	// Bytes that arrived before raw mode was set were cooked; drop them.
	if err := unix.IoctlSetInt(fd, unix.TCFLSH, unix.TCIFLUSH); err != nil {
		return fmt.Errorf("cannot flush input: %w", err)
	}
	return nil
}
