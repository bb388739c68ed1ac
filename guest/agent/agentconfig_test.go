package main

import (
	"github.com/pgwasm/pgwasm/internal/testkit/pgtest"
)

// agentConfig points the agent at pg's Unix socket.
func agentConfig(pg *pgtest.Server) pgConfig {
	return pgConfig{
		SocketDir:      pg.Dir,
		Port:           pg.Port,
		User:           "postgres",
		Database:       "postgres",
		Wait:           10e9,
		MaxResultBytes: 1 << 20,
	}
}
