// Package push is the domain of push notifications: users' push rules
// (stored as their m.push_rules account data), evaluating new events
// against the rules of each local member of the room, and pushers, which
// deliver notifications to push gateways. It knows nothing of HTTP or SQL:
// api calls it, storage implements the stores it declares, and the HTTP
// client to gateways is given to it by cmd.
package push
