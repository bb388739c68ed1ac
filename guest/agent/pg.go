package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
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
	conn    *pgconn.PgConn
	guard   *copyGuard
	lastErr error
	// types maps type OIDs to names; built-in types come from pgtype, others
	// are looked up in pg_type once.
	types *pgtype.Map
	extra map[uint32]string
}

func newPGClient(cfg pgConfig, log *slog.Logger) *pgClient {
	return &pgClient{cfg: cfg, log: log, extra: map[uint32]string{}}
}

func (c *pgClient) Close() {
	if c.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		c.conn.Close(ctx)
		c.conn = nil
	}
}

// connString quotes values the libpq way so socket paths with spaces work.
func (c *pgClient) connString() string {
	q := func(s string) string {
		return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
	}
	return "host=" + q(c.cfg.SocketDir) +
		" port=" + strconv.Itoa(c.cfg.Port) +
		" user=" + q(c.cfg.User) +
		" dbname=" + q(c.cfg.Database) +
		" application_name=pgwasm-agent sslmode=disable connect_timeout=10"
}

// alive reports whether the open connection can still be used, noticing a
// server that closed it (restart, crash) before a request is sent on it.
// Messages that arrived while idle are consumed first: a backend killed by
// an immediate shutdown sends a notice before its end of file.
func (c *pgClient) alive() bool {
	if c.conn == nil {
		return false
	}
	for i := 0; i < 16 && !c.conn.IsClosed(); i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		_, err := c.conn.ReceiveMessage(ctx)
		cancel()
		if err == nil {
			continue
		}
		if pgconn.Timeout(err) {
			return true
		}
		c.log.Info("postgres connection lost", "err", err)
		break
	}
	c.Close()
	return false
}

func (c *pgClient) connectOnce(ctx context.Context) error {
	cfg, err := pgconn.ParseConfig(c.connString())
	if err != nil {
		return fmt.Errorf("bad PostgreSQL settings: %w", err)
	}
	// Notices (e.g. from DO blocks) are not part of the protocol yet; keep
	// them in the log rather than losing them silently.
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		c.log.Info("postgres notice", "severity", n.Severity, "message", n.Message)
	}
	var guard *copyGuard
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		guard = &copyGuard{Conn: conn}
		return guard, nil
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		c.lastErr = err
		return err
	}
	c.conn, c.guard, c.lastErr = conn, guard, nil
	c.log.Info("connected to postgres", "server_version", conn.ParameterStatus("server_version"), "pid", conn.PID())
	return nil
}

// get returns an open connection, waiting up to cfg.Wait for PostgreSQL to
// start accepting connections.
func (c *pgClient) get(ctx context.Context) (*pgconn.PgConn, error) {
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
		// Wrong password, missing database and the like will not fix themselves.
		var pe *pgconn.PgError
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
			return dbState{Err: err.Error()}
		}
	}
	return dbState{Ready: true, Version: c.conn.ParameterStatus("server_version")}
}

// retry runs op on a live connection, and once more on a new connection when
// the first attempt failed before anything reached the server (the old
// connection had died in a way CheckConn could not see).
func (c *pgClient) retry(ctx context.Context, op func(*pgconn.PgConn) error) error {
	for attempt := 0; ; attempt++ {
		conn, err := c.get(ctx)
		if err != nil {
			return err
		}
		err = op(conn)
		if err == nil {
			return nil
		}
		if conn.IsClosed() {
			c.Close()
			if attempt == 0 && pgconn.SafeToRetry(err) {
				continue
			}
		}
		return convertError(err)
	}
}

// Query runs one statement with the extended protocol; params are text and
// their types are inferred by the server.
func (c *pgClient) Query(ctx context.Context, sql string, params []*string) (result, error) {
	values := make([][]byte, len(params))
	for i, p := range params {
		if p != nil {
			values[i] = []byte(*p)
		}
	}
	var res result
	err := c.retry(ctx, func(conn *pgconn.PgConn) error {
		c.guard.extended.Store(true)
		var err error
		res, err = c.collect(conn.ExecParams(ctx, sql, values, nil, nil, nil))
		return err
	})
	if err != nil {
		return result{}, err
	}
	if err := c.nameTypes(ctx, []result{res}); err != nil {
		return result{}, err
	}
	return res, nil
}

// Exec runs any number of statements with the simple protocol.
func (c *pgClient) Exec(ctx context.Context, sql string) ([]result, error) {
	var results []result
	err := c.retry(ctx, func(conn *pgconn.PgConn) error {
		results = results[:0]
		c.guard.extended.Store(false)
		mrr := conn.Exec(ctx, sql)
		var err error
		for mrr.NextResult() {
			var res result
			res, err = c.collect(mrr.ResultReader())
			if err != nil {
				break
			}
			// An empty statement ("" or ";") is not a statement.
			if res.Command == "" && len(res.Columns) == 0 {
				continue
			}
			results = append(results, res)
		}
		if cerr := mrr.Close(); err == nil {
			err = cerr
		}
		return err
	})
	if nerr := c.nameTypes(ctx, results); nerr != nil && err == nil {
		err = nerr
	}
	if err != nil {
		var se *sqlError
		if errors.As(err, &se) {
			se.Partial = results
		}
		return nil, err
	}
	return results, nil
}

// collect reads one statement's rows as text, enforcing the result size limit.
func (c *pgClient) collect(rr *pgconn.ResultReader) (result, error) {
	res := result{Columns: []column{}, Rows: [][]*string{}}
	for _, fd := range rr.FieldDescriptions() {
		res.Columns = append(res.Columns, column{Name: fd.Name, TypeOID: fd.DataTypeOID})
	}
	var size int64
	tooBig := false
	for rr.NextRow() {
		if tooBig {
			continue // drain the rest so the connection stays usable
		}
		vals := rr.Values()
		row := make([]*string, len(vals))
		for i, v := range vals {
			if v != nil {
				s := string(v)
				row[i] = &s
				size += int64(len(v))
			}
		}
		size += int64(8 * len(vals))
		if size > c.cfg.MaxResultBytes {
			tooBig, res.Rows = true, nil
			continue
		}
		res.Rows = append(res.Rows, row)
	}
	tag, err := rr.Close()
	if err != nil {
		return result{}, err
	}
	if tooBig {
		return result{}, fmt.Errorf("result is larger than %d bytes; add a LIMIT or fetch it in parts", c.cfg.MaxResultBytes)
	}
	res.Command = tag.String()
	res.RowsAffected = tag.RowsAffected()
	return res, nil
}

// nameTypes fills in the type names of every column, asking pg_type about
// the OIDs that are not built in (extension types, domains, enums).
func (c *pgClient) nameTypes(ctx context.Context, results []result) error {
	if c.types == nil {
		c.types = pgtype.NewMap()
	}
	var unknown []string
	for _, r := range results {
		for _, col := range r.Columns {
			if _, ok := c.typeName(col.TypeOID); !ok {
				unknown = append(unknown, strconv.FormatUint(uint64(col.TypeOID), 10))
			}
		}
	}
	if len(unknown) > 0 && c.alive() {
		c.guard.extended.Store(true)
		rr := c.conn.ExecParams(ctx, "SELECT oid, typname FROM pg_catalog.pg_type WHERE oid = ANY($1::oid[])",
			[][]byte{[]byte("{" + strings.Join(unknown, ",") + "}")}, nil, nil, nil)
		for rr.NextRow() {
			v := rr.Values()
			oid, err := strconv.ParseUint(string(v[0]), 10, 32)
			if err == nil {
				c.extra[uint32(oid)] = string(v[1])
			}
		}
		if _, err := rr.Close(); err != nil {
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
	return nil
}

func (c *pgClient) typeName(oid uint32) (string, bool) {
	if t, ok := c.types.TypeForOID(oid); ok {
		return t.Name, true
	}
	name, ok := c.extra[oid]
	return name, ok
}

// convertError turns a server error into the protocol's SQL error fields.
func convertError(err error) error {
	var pe *pgconn.PgError
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
