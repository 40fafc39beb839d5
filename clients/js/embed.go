// Package jsclient embeds the JavaScript client, @threadbus/client, so that
// the sidecar's viewer page serves the very file the npm package ships: there
// is one source and no copy to go stale.
package jsclient

import _ "embed"

// Source is threadbus.js, the client as an ES module.
//
//go:embed threadbus.js
var Source []byte
