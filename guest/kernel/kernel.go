// Package kernel holds the guest kernel's configuration fragment,
// pgwasm.config, which internal/image/kernelbuild applies over allnoconfig
// when the image is built with `--kernel source`.
package kernel

import _ "embed"

// Config is pgwasm.config: every option with its reason on the line above.
//
//go:embed pgwasm.config
var Config []byte
