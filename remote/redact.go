package remote

import (
	"errors"
	"net/url"
	"regexp"
)

// Signed blob storage URLs carry their signature in the query string, and
// a URL may carry credentials in its userinfo: neither may reach a log
// line. net/http's errors quote the full URL of the request that failed,
// and containerd's token errors the token URL, so every error that leaves
// this package, and every error this package logs, goes through redact.

const redactedQuery = "redacted"

// redactURL returns rawURL without userinfo and fragment, its query string
// (if any) replaced by "redacted".
func redactURL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return redactText(rawURL)
	}
	u.User = nil
	u.Fragment, u.RawFragment = "", ""
	if u.RawQuery != "" || u.ForceQuery {
		u.RawQuery, u.ForceQuery = redactedQuery, false
	}
	return u.String()
}

// urlInText matches what looks like an absolute URL in free text, in parts:
// scheme, userinfo, the rest up to the query, query, fragment.
var urlInText = regexp.MustCompile(`([A-Za-z][A-Za-z0-9+.-]*://)([^/\s"'<>@]*@)?([^\s"'<>?#]*)(\?[^\s"'<>#]*)?(#[^\s"'<>]*)?`)

// redactText redacts every URL in s as redactURL does.
func redactText(s string) string {
	return urlInText.ReplaceAllStringFunc(s, func(m string) string {
		p := urlInText.FindStringSubmatch(m)
		out := p[1] + p[3]
		if p[4] != "" {
			out += "?" + redactedQuery
		}
		return out
	})
}

// redact makes err safe to log: the URLs of the *url.Errors in its chain
// are redacted in place, and its text, whatever else it quotes, is
// redacted too. errors.Is and errors.As see the same chain as before.
func redact(err error) error {
	if err == nil {
		return nil
	}
	redactChain(err)
	if _, ok := err.(*redactedError); ok {
		return err
	}
	return &redactedError{err: err}
}

func redactChain(err error) {
	for err != nil {
		if ue, ok := err.(*url.Error); ok {
			ue.URL = redactURL(ue.URL)
		}
		switch e := err.(type) {
		case interface{ Unwrap() []error }:
			for _, inner := range e.Unwrap() {
				redactChain(inner)
			}
			return
		default:
			err = errors.Unwrap(err)
		}
	}
}

// redactedError is an error whose text has its URLs redacted.
type redactedError struct{ err error }

func (e *redactedError) Error() string { return redactText(e.err.Error()) }

func (e *redactedError) Unwrap() error { return e.err }
