package netstack

import (
	"reflect"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// Error is a gVisor tcpip.Error, which is not a Go error, turned into one
// where it leaves gVisor. Two Errors match under errors.Is when gVisor's
// errors are of one kind, so callers compare with the kinds below without
// importing gVisor:
//
//	if errors.Is(err, netstack.ErrPortInUse) { ... }
type Error struct {
	err tcpip.Error
}

// Kinds of Error that this package's functions return.
var (
	// ErrPortInUse: a socket is bound to the address and port already.
	ErrPortInUse = &Error{&tcpip.ErrPortInUse{}}
	// ErrDuplicateAddress: the stack has the address already.
	ErrDuplicateAddress = &Error{&tcpip.ErrDuplicateAddress{}}
)

func (e *Error) Error() string { return e.err.String() }

// Is reports whether target is an Error of the same kind.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && reflect.TypeOf(t.err) == reflect.TypeOf(e.err)
}

// goError turns e into an *Error; nil stays nil.
func goError(e tcpip.Error) error {
	if e == nil {
		return nil
	}
	return &Error{e}
}
