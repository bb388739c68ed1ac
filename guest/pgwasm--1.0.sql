-- pgwasm 1.0 (docs/vm.md, "Dumps to other servers").
--
-- Debian's postgresql-17 17.12-0+deb13u1 gives every column it creates an
-- attribute option pg_attver=<WAL position> (heap_create_with_catalog,
-- ALTER TABLE ADD COLUMN, table rewrites). pg_dump writes every attribute
-- option as ALTER TABLE ... ALTER COLUMN ... SET (pg_attver=N), which every
-- other PostgreSQL server rejects. No setting turns it off, and
-- ALTER COLUMN ... RESET (pg_attver) leaves it in place, so after each DDL
-- command this trigger removes the option from the catalog row itself
-- (keeping any other option such as n_distinct); the catalog update
-- invalidates the relation's cache entry like any other. Only relations
-- users create (OID 16384 and above) are touched; on a server without
-- pg_attver it finds nothing to do.
\echo Use "CREATE EXTENSION pgwasm" to load this file. \quit

CREATE FUNCTION pg_catalog.pgwasm_clear_attver() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
	UPDATE pg_catalog.pg_attribute a
	   SET attoptions = NULLIF(ARRAY(SELECT o FROM unnest(a.attoptions) o WHERE o NOT LIKE 'pg\_attver=%'), '{}')
	 WHERE a.attrelid >= 16384::oid AND a.attoptions::text LIKE '%pg\_attver=%';
END
$$;

CREATE EVENT TRIGGER pgwasm_clear_attver ON ddl_command_end
	EXECUTE FUNCTION pg_catalog.pgwasm_clear_attver();
-- Also in replication apply workers and with session_replication_role = replica.
ALTER EVENT TRIGGER pgwasm_clear_attver ENABLE ALWAYS;
