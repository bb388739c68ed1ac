package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"time"
)

type pgConfig struct {
	SocketDir      string
	Port           int
	User           string
	Database       string
	Wait           time.Duration
	MaxResultBytes int64
}

// pgClient keeps one connection to PostgreSQL and reopens it when it drops.
// It is used by the single protocol loop only, so it has no lock.
type pgClient struct {
	cfg     pgConfig
	log     *slog.Logger
	conn    *pgConn
	lastErr error
	// extra maps the OIDs of types that are not in builtinTypes (extension
	// types, domains, enums) to names, looked up in pg_type once.
	extra map[uint32]string
}

func newPGClient(cfg pgConfig, log *slog.Logger) *pgClient {
	return &pgClient{cfg: cfg, log: log, extra: map[uint32]string{}}
}

func (c *pgClient) Close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// alive reports whether the open connection can still be used.
func (c *pgClient) alive() bool {
	if c.conn == nil {
		return false
	}
	if c.conn.alive() {
		return true
	}
	c.Close()
	return false
}

func (c *pgClient) connectOnce(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := dialPG(ctx, c.cfg, c.log)
	if err != nil {
		c.lastErr = err
		return err
	}
	c.conn, c.lastErr = conn, nil
	c.log.Info("connected to postgres", "server_version", conn.params["server_version"], "pid", conn.pid)
	return nil
}

// get returns an open connection, waiting up to cfg.Wait for PostgreSQL to
// start accepting connections.
func (c *pgClient) get(ctx context.Context) (*pgConn, error) {
	if c.alive() {
		return c.conn, nil
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Wait)
	defer cancel()
	for {
		err := c.connectOnce(ctx)
		if err == nil {
			return c.conn, nil
		}
		// Wrong authentication, missing database and the like will not fix themselves.
		var pe *pgError
		if errors.As(err, &pe) && pe.Code != "57P03" { // 57P03: the database system is starting up
			return nil, fmt.Errorf("cannot connect to postgres: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("postgres is not accepting connections after %s (still starting?): %w", c.cfg.Wait, err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (c *pgClient) State(ctx context.Context) dbState {
	if !c.alive() {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := c.connectOnce(ctx); err != nil {
			return dbState{Err: err.Error(), Recovering: inRecovery(err)}
		}
	}
	return dbState{Ready: true, Version: c.conn.params["server_version"]}
}

// retry runs op on a live connection, and once more on a new connection when
// the first attempt failed before anything reached the server (the old
// connection had died in a way alive could not see).
func (c *pgClient) retry(ctx context.Context, op func(*pgConn) error) error {
	for attempt := 0; ; attempt++ {
		conn, err := c.get(ctx)
		if err != nil {
			return err
		}
		err = op(conn)
		if err == nil {
			return nil
		}
		if conn.closed {
			c.Close()
			if attempt == 0 && errors.Is(err, errNotSent) {
				continue
			}
		}
		return convertError(err)
	}
}

// Query runs one statement with the extended protocol; params are text and
// their types are inferred by the server.
func (c *pgClient) Query(ctx context.Context, sql string, params []*string) (result, error) {
	return c.QueryStream(ctx, sql, params, nil)
}

// QueryStream is Query with the rows streamed to stream (nil: not streamed).
func (c *pgClient) QueryStream(ctx context.Context, sql string, params []*string, stream *streamOpts) (result, error) {
	values := make([][]byte, len(params))
	for i, p := range params {
		if p != nil {
			values[i] = []byte(*p)
		}
	}
	var res *result
	err := c.retry(ctx, func(conn *pgConn) error {
		res = nil
		if err := conn.extended(sql, values); err != nil {
			return err
		}
		return conn.run(ctx, true, c.limits(stream), func(r result) { res = &r })
	})
	if err != nil {
		return result{}, err
	}
	if res == nil { // an empty statement
		res = &result{Columns: []column{}, Rows: [][]*string{}}
	}
	c.nameTypes(ctx, []result{*res})
	return *res, nil
}

// Exec runs any number of statements with the simple protocol.
func (c *pgClient) Exec(ctx context.Context, sql string) ([]result, error) {
	return c.ExecStream(ctx, sql, nil)
}

// ExecStream is Exec with the rows streamed to stream (nil: not streamed).
func (c *pgClient) ExecStream(ctx context.Context, sql string, stream *streamOpts) ([]result, error) {
	var results []result
	err := c.retry(ctx, func(conn *pgConn) error {
		results = results[:0]
		if err := conn.simple(sql); err != nil {
			return err
		}
		return conn.run(ctx, false, c.limits(stream), func(r result) { results = append(results, r) })
	})
	c.nameTypes(ctx, results)
	if err != nil {
		var se *sqlError
		if errors.As(err, &se) {
			se.Partial = results
		}
		return nil, err
	}
	return results, nil
}

// limits turns a request's stream options into run's limits. Unstreamed,
// the whole result is held, up to -max-result-bytes. Streamed, the agent
// holds one chunk at a time, so the cap is the caller's (0: none).
func (c *pgClient) limits(stream *streamOpts) limits {
	if stream == nil {
		return limits{max: c.cfg.MaxResultBytes}
	}
	lim := limits{max: stream.MaxBytes, chunk: stream.ChunkBytes}
	if lim.max <= 0 {
		lim.max = math.MaxInt64
	}
	lim.sink = func(stmt int, cols []column, rows [][]*string) error {
		if cols != nil {
			// The types not built in are looked up after the statement
			// (the session is busy now): a part names them by OID, the
			// final response by name.
			named := make([]column, len(cols))
			for i, col := range cols {
				name, ok := c.typeName(col.TypeOID)
				if !ok {
					name = strconv.FormatUint(uint64(col.TypeOID), 10)
				}
				named[i] = col
				named[i].Type = name
			}
			cols = named
		}
		return stream.Send(stmt, cols, rows)
	}
	return lim
}

// nameTypes fills in the type names of every column, asking pg_type about
// the OIDs that are not built in (extension types, domains, enums).
func (c *pgClient) nameTypes(ctx context.Context, results []result) {
	var unknown []string
	for _, r := range results {
		for _, col := range r.Columns {
			if _, ok := c.typeName(col.TypeOID); !ok {
				unknown = append(unknown, strconv.FormatUint(uint64(col.TypeOID), 10))
			}
		}
	}
	if len(unknown) > 0 && c.alive() {
		conn := c.conn
		err := conn.extended("SELECT oid, typname FROM pg_catalog.pg_type WHERE oid = ANY($1::oid[])",
			[][]byte{[]byte("{" + strings.Join(unknown, ",") + "}")})
		if err == nil {
			err = conn.run(ctx, true, limits{max: 1 << 20}, func(r result) {
				for _, row := range r.Rows {
					if len(row) == 2 && row[0] != nil && row[1] != nil {
						if oid, err := strconv.ParseUint(*row[0], 10, 32); err == nil {
							c.extra[uint32(oid)] = *row[1]
						}
					}
				}
			})
		}
		if err != nil {
			c.log.Warn("cannot look up type names", "err", err)
		}
	}
	for _, r := range results {
		for i := range r.Columns {
			name, ok := c.typeName(r.Columns[i].TypeOID)
			if !ok {
				name = strconv.FormatUint(uint64(r.Columns[i].TypeOID), 10)
			}
			r.Columns[i].Type = name
		}
	}
}

func (c *pgClient) typeName(oid uint32) (string, bool) {
	if name, ok := builtinTypes[oid]; ok {
		return name, true
	}
	name, ok := c.extra[oid]
	return name, ok
}

// builtinTypes are PostgreSQL's built-in types with fixed OIDs (pg_type.dat),
// the ones results carry most often; TestBuiltinTypes checks them against a
// real server.
var builtinTypes = map[uint32]string{
	16: "bool", 17: "bytea", 18: "char", 19: "name", 20: "int8", 21: "int2", 23: "int4",
	24: "regproc", 25: "text", 26: "oid", 27: "tid", 28: "xid", 29: "cid", 114: "json",
	142: "xml", 600: "point", 601: "lseg", 602: "path", 603: "box", 604: "polygon",
	628: "line", 650: "cidr", 700: "float4", 701: "float8", 705: "unknown", 718: "circle",
	774: "macaddr8", 790: "money", 829: "macaddr", 869: "inet", 1033: "aclitem",
	1042: "bpchar", 1043: "varchar", 1082: "date", 1083: "time", 1114: "timestamp",
	1184: "timestamptz", 1186: "interval", 1266: "timetz", 1560: "bit", 1562: "varbit",
	1700: "numeric", 2202: "regprocedure", 2205: "regclass", 2206: "regtype",
	2249: "record", 2275: "cstring", 2278: "void", 2950: "uuid", 3220: "pg_lsn",
	3614: "tsvector", 3615: "tsquery", 3802: "jsonb", 4072: "jsonpath", 5069: "xid8",
	3904: "int4range", 3906: "numrange", 3908: "tsrange", 3910: "tstzrange",
	3912: "daterange", 3926: "int8range",
	199: "_json", 1000: "_bool", 1001: "_bytea", 1002: "_char", 1003: "_name",
	1005: "_int2", 1007: "_int4", 1009: "_text", 1014: "_bpchar", 1015: "_varchar",
	1016: "_int8", 1021: "_float4", 1022: "_float8", 1028: "_oid", 1115: "_timestamp",
	1182: "_date", 1183: "_time", 1185: "_timestamptz", 1187: "_interval",
	1231: "_numeric", 2951: "_uuid", 3807: "_jsonb",
}

// inRecovery reports whether a connection was refused because the server
// is in crash recovery: SQLSTATE 57P03 covers starting up, shutting down and
// recovery alike, and only the message (the postmaster's own, in its locale,
// C.UTF-8 in the image) tells them apart. "not yet accepting connections" is
// recovery before a consistent state (canAcceptConnections in postmaster.c).
func inRecovery(err error) bool {
	var pe *pgError
	if !errors.As(err, &pe) || pe.Code != "57P03" {
		return false
	}
	return strings.Contains(pe.Message, "recovery mode") || strings.Contains(pe.Message, "not yet accepting connections")
}

// convertError turns a server error into the protocol's SQL error fields.
func convertError(err error) error {
	var pe *pgError
	if errors.As(err, &pe) {
		return &sqlError{
			SQLState: pe.Code,
			Message:  pe.Message,
			Detail:   pe.Detail,
			Hint:     pe.Hint,
			Position: pe.Position,
		}
	}
	return err
}
