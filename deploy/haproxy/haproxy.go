// Package haproxy renders the HAProxy configuration that routes a pgwasm
// cluster by session (haproxy.cfg.tmpl): the cluster test renders it with
// loopback replicas, deploy/kubernetes holds it rendered for Kubernetes.
package haproxy

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"text/template"
)

//go:embed haproxy.cfg.tmpl
var cfgTemplate string

// Lua is pg-sslrequest.lua, the action the SNI front needs for libpq's
// classic TLS start; install it at Params.LuaPath.
//
//go:embed pg-sslrequest.lua
var Lua []byte

var tmpl = template.Must(template.New("haproxy.cfg").Option("missingkey=error").Parse(cfgTemplate))

// Server is one pgwasm replica.
type Server struct {
	// Name and ID must be the same wherever a replica appears: the
	// consistent hash places keys by them.
	Name string
	ID   int
	// HTTP and SNI are the replica's --listen and --tunnel-sni-listen
	// addresses as HAProxy reaches them (host:port).
	HTTP, SNI string
	// CheckPort is the HTTP port, where the SNI backend checks /readyz.
	CheckPort int
}

// Params fill the template.
type Params struct {
	HTTPBind, SNIBind string // HAProxy's fronts, e.g. ":8080", ":5433"
	LuaPath           string // where pg-sslrequest.lua is
	StatsSocket       string // optional admin socket
	// MaxConn bounds HAProxy's connections (each websocket and tunnel
	// connection is one, two file descriptors); the process needs a file
	// descriptor limit of about twice this.
	MaxConn int
	// Health checks of /readyz: interval ("2s"), failures to go down,
	// successes to come back.
	CheckInterval        string
	CheckFall, CheckRise int
	Servers              []Server
	ServerOpts           string // appended to each server line, e.g. " resolvers kube init-addr none"
	Resolvers            string // name of a resolvers section to emit; empty: none
}

// Render returns the configuration.
func Render(p Params) ([]byte, error) {
	if len(p.Servers) == 0 {
		return nil, errors.New("haproxy config: no servers")
	}
	if p.HTTPBind == "" || p.SNIBind == "" || p.LuaPath == "" || p.CheckInterval == "" || p.CheckFall < 1 || p.CheckRise < 1 || p.MaxConn < 1 {
		return nil, fmt.Errorf("haproxy config: incomplete parameters %+v", p)
	}
	ids := map[int]bool{}
	for _, s := range p.Servers {
		if s.Name == "" || s.ID < 1 || ids[s.ID] || s.HTTP == "" || s.SNI == "" || s.CheckPort < 1 {
			return nil, fmt.Errorf("haproxy config: bad or duplicate server %+v", s)
		}
		ids[s.ID] = true
	}
	var b bytes.Buffer
	if err := tmpl.Execute(&b, p); err != nil {
		return nil, fmt.Errorf("haproxy config: %w", err)
	}
	return b.Bytes(), nil
}

// Kubernetes returns the parameters of deploy/kubernetes/haproxy.cfg: n
// replicas of the StatefulSet "pgwasm" behind its headless Service
// "pgwasm" in namespace ns, found by their stable DNS names.
func Kubernetes(ns string, n int) Params {
	p := Params{
		HTTPBind: ":8080", SNIBind: ":5433",
		LuaPath:       "/usr/local/etc/haproxy/pg-sslrequest.lua",
		MaxConn:       50000,
		CheckInterval: "1s", CheckFall: 2, CheckRise: 2,
		ServerOpts: " resolvers kube init-addr none",
		Resolvers:  "kube",
	}
	for i := range n {
		host := fmt.Sprintf("pgwasm-%d.pgwasm.%s.svc.cluster.local", i, ns)
		p.Servers = append(p.Servers, Server{
			Name: fmt.Sprintf("pgwasm-%d", i), ID: i + 1,
			HTTP: host + ":8080", SNI: host + ":5433", CheckPort: 8080,
		})
	}
	return p
}
