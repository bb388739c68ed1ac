-- pg-sslrequest.lua: lets HAProxy route PostgreSQL's classic TLS start by
-- SNI. libpq (before 17's sslnegotiation=direct) first sends an 8-byte
-- SSLRequest and sends its TLS ClientHello only after the server answers
-- 'S', so the server name is not there to route by. This action answers the
-- SSLRequest itself, removes it from the stream, and lets the ClientHello
-- arrive; pgwasm's tunnel takes a ClientHello at byte 0 and asks the VM's
-- PostgreSQL for TLS the classic way when the hello lacks ALPN
-- "postgresql" (docs/deploy.md). A direct-TLS start passes untouched.
local SSLREQUEST = "\0\0\0\8\4\210\22\47"
local TLS_HANDSHAKE = "\22"

core.register_action("pg_sslrequest", { "tcp-req" }, function(txn)
    local req = txn.req
    while req:input() < 8 do
        if req:input() >= 1 and req:data(0, 1) == TLS_HANDSHAKE then
            return
        end
        -- Woken again when more bytes arrive, or by inspect-delay.
        core.yield()
    end
    if req:data(0, 8) == SSLREQUEST then
        req:remove(0, 8)
        txn.res:send("S")
    end
end)
