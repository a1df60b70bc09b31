// Package pushgateway is the HTTP client that sends notifications to push
// gateways (POST /_matrix/push/v1/notify, push_notifier.yaml). It
// implements push.Gateway.
//
// Gateway URLs are user-given (a pusher's data.url), so every connection
// is vetted like a URL preview's (internal/urlpreview): the address
// actually dialled, after DNS resolution, must be global unicast unless
// the operator allowed its range. Redirects are not followed (a 3xx is a
// failed attempt) and no proxy from the environment is used, so nothing
// but the checked dialer opens connections.
package pushgateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"syscall"
	"time"

	mgw "maunium.net/go/mautrix/pushrules/pushgateway"

	"github.com/weftchat/weft/internal/urlpreview"
)

// Defaults for zero Config fields.
const (
	DefaultTimeout   = 10 * time.Second
	DefaultUserAgent = "Weft push (+https://github.com/weftchat/weft)"
	// maxResponseBytes bounds the response body read: {"rejected": [...]}
	// for one pushkey is tiny.
	maxResponseBytes = 64 << 10
	maxHeaderBytes   = 16 << 10
)

// Config tunes a Client.
type Config struct {
	// Timeout bounds one notification: connecting, sending, the answer.
	Timeout time.Duration
	// AllowedCIDRs may be connected to although they are not global
	// (a gateway on the organisation's network; the tests' loopback).
	AllowedCIDRs []netip.Prefix
	// Resolver resolves gateway host names; nil: net.DefaultResolver.
	Resolver  *net.Resolver
	UserAgent string
}

// Client sends notifications. It is safe for concurrent use.
type Client struct {
	cfg    Config
	client *http.Client
}

// StatusError is a gateway's answer outside 2xx.
type StatusError struct{ StatusCode int }

func (e *StatusError) Error() string {
	return fmt.Sprintf("push gateway answered HTTP %d", e.StatusCode)
}

// New returns a Client for cfg.
func New(cfg Config) *Client {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = DefaultUserAgent
	}
	policy := urlpreview.NewPolicy(cfg.AllowedCIDRs, nil)
	dialer := &net.Dialer{
		Timeout:  cfg.Timeout,
		Resolver: cfg.Resolver,
		// Called for each address tried, after resolution and before
		// connect(2): a refused address gets no packet.
		ControlContext: func(_ context.Context, network, address string, _ syscall.RawConn) error {
			if network != "tcp4" && network != "tcp6" && network != "tcp" {
				return fmt.Errorf("%w: network %s", urlpreview.ErrRefused, network)
			}
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("%w: unparsable address %q", urlpreview.ErrRefused, address)
			}
			return policy.Check(ap.Addr())
		},
	}
	transport := &http.Transport{
		Proxy:                  nil, // a proxy would dial for us, unchecked
		DialContext:            dialer.DialContext,
		ForceAttemptHTTP2:      true,
		TLSHandshakeTimeout:    cfg.Timeout,
		ResponseHeaderTimeout:  cfg.Timeout,
		MaxResponseHeaderBytes: maxHeaderBytes,
		MaxIdleConns:           64,
		MaxIdleConnsPerHost:    8,
		IdleConnTimeout:        90 * time.Second,
	}
	return &Client{cfg: cfg, client: &http.Client{
		Transport: transport,
		Timeout:   cfg.Timeout,
		// A redirect is answered as the gateway's response: a 3xx, which
		// is not a success.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// CloseIdleConnections closes kept-alive connections (at shutdown).
func (c *Client) CloseIdleConnections() { c.client.CloseIdleConnections() }

// Notify POSTs the notification to the gateway at rawURL and returns the
// pushkeys it rejected. A 2xx whose body is not the expected JSON counts
// as delivered with nothing rejected: the gateway took the notification,
// and sending it again would only duplicate it.
func (c *Client) Notify(ctx context.Context, rawURL string, n *mgw.PushNotification) ([]string, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.User != nil {
		return nil, fmt.Errorf("push gateway URL %q is not an http(s) URL without credentials", rawURL)
	}
	body, err := json.Marshal(&mgw.ReqPush{Notification: n})
	if err != nil {
		return nil, fmt.Errorf("encoding the notification: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("building the request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", c.cfg.UserAgent)
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("posting to push gateway %s: %w", u.Redacted(), err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return nil, fmt.Errorf("reading push gateway %s's answer: %w", u.Redacted(), err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, fmt.Errorf("push gateway %s: %w", u.Redacted(), &StatusError{StatusCode: resp.StatusCode})
	}
	var answer mgw.RespPush
	if json.Unmarshal(raw, &answer) != nil {
		return nil, nil
	}
	return answer.Rejected, nil
}

// IsRefused reports whether err is a refusal to connect to an address the
// policy does not allow (no packet was sent).
func IsRefused(err error) bool { return errors.Is(err, urlpreview.ErrRefused) }
