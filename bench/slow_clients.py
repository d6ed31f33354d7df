#!/usr/bin/env python3
"""Slow clients against a healthy one, on the demo cluster (./demo.sh).

N clients subscribe to table `burst` and never read; one healthy client subscribes to `pulse`
and reads promptly, and another reads `burst` promptly. A burst of rows commits to `burst`
(in one transaction, or in `burst_txns` from 4 writers) while `pulse` gets 10 rows/s. Prints
the worker's peak RSS, the healthy client's gaps and worst latency, how much of the burst the
prompt reader received and the gaps it was told of, the transactions the queue lost, and the
RSS after the slow clients leave.

    bench/slow_clients.py [non_readers=10000] [burst_rows=200000] [row_bytes=100] [burst_txns=1]

Needs `ulimit -n` above N (run as root; the script raises its soft limit to the hard one).
Plain sockets only: no WebSocket library needed.
"""
import base64, json, os, resource, socket, struct, subprocess, sys, threading, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
ROWS = int(sys.argv[2]) if len(sys.argv) > 2 else 200000
ROW_BYTES = int(sys.argv[3]) if len(sys.argv) > 3 else 100
TXNS = int(sys.argv[4]) if len(sys.argv) > 4 else 1
WS_PORT = int(os.environ.get("WSPORT", "8080"))
BIN = subprocess.run(["bash", "-c", ". scripts/lib.sh && echo $BIN"], check=True, capture_output=True,
                     text=True, cwd=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")).stdout.strip()
PSQL = [f"{BIN}/psql", "-XAtq", "-h", "localhost", "-p",
        os.environ.get("PGPORT", "54320"), "-U", "postgres", "-d", "postgres"]


def sql(text):
    return subprocess.run(PSQL + ["-c", text], check=True, capture_output=True, text=True).stdout.strip()


def connect(source="127.0.0.1", rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((source, 0))
    s.connect(("127.0.0.1", WS_PORT))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


def send_text(s, text):
    data = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    n = len(data)
    head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
    s.sendall(head + mask + masked)


def read_frame(s, buf):
    """Returns (opcode, payload, rest of buf)."""
    def need(n):
        nonlocal buf
        while len(buf) < n:
            chunk = s.recv(65536)
            if not chunk:
                raise EOFError
            buf += chunk
    need(2)
    op, n = buf[0] & 0x0F, buf[1] & 0x7F
    at = 2
    if n == 126:
        need(4); n = struct.unpack(">H", buf[2:4])[0]; at = 4
    elif n == 127:
        need(10); n = struct.unpack(">Q", buf[2:10])[0]; at = 10
    need(at + n)
    return op, buf[at:at + n], buf[at + n:]


def subscribe(s, table):
    send_text(s, json.dumps({"type": "subscribe", "id": "s", "table": table}))
    buf = b""
    while True:
        op, payload, buf = read_frame(s, buf)
        if op == 1:
            assert b"subscribed" in payload, payload
            return buf


def worker_rss_mib():
    pid = sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'realtime_ext'")
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sql("DROP TABLE IF EXISTS burst, pulse; CREATE TABLE burst (id int, pad text); "
        "CREATE TABLE pulse (id int); SELECT realtime_watch('burst'); SELECT realtime_watch('pulse'); "
        "DO $$ BEGIN EXECUTE format('GRANT SELECT ON burst, pulse TO %I', "
        "current_setting('realtime.anon_role')); END $$")
    rss_before = worker_rss_mib()
    stuck = []
    for i in range(N):
        # Loopback has many addresses: spread the clients so that no source runs out of ports.
        s = connect(source=f"127.0.{1 + i // 20000}.{2 + (i // 250) % 250}", rcvbuf=4096)
        subscribe(s, "burst")
        stuck.append(s)
    healthy = connect()
    buf = subscribe(healthy, "pulse")
    prompt = connect(source="127.0.0.1")
    prompt_buf = subscribe(prompt, "burst")
    burst_got, burst_gaps = [0], []

    def read_burst():
        nonlocal prompt_buf
        prompt.settimeout(120)
        try:
            while True:
                op, payload, prompt_buf = read_frame(prompt, prompt_buf)
                if op != 1:
                    continue
                m = json.loads(payload)
                if m["type"] == "gap":
                    burst_gaps.append(m["reason"])
                elif m["type"] == "change":
                    burst_got[0] += 1
        except (socket.timeout, EOFError):
            pass

    burst_reader = threading.Thread(target=read_burst)
    burst_reader.start()
    sent, got, gaps, worst = {}, [], [], [0.0]

    def read():
        nonlocal buf
        healthy.settimeout(10)
        try:
            while True:
                op, payload, buf = read_frame(healthy, buf)
                if op != 1:
                    continue
                m = json.loads(payload)
                if m["type"] == "gap":
                    gaps.append(m)
                elif m["type"] == "change":
                    i = m["new"]["id"]
                    worst[0] = max(worst[0], time.monotonic() - sent[i])
                    got.append(i)
        except (socket.timeout, EOFError):
            pass

    reader = threading.Thread(target=read)
    reader.start()
    if TXNS == 1:
        burst = subprocess.Popen(PSQL + ["-c", f"INSERT INTO burst SELECT g, repeat('x', {ROW_BYTES}) "
                                              f"FROM generate_series(1, {ROWS}) g"])
    else:
        script = f"/tmp/slow_clients_burst_{os.getpid()}.sql"
        with open(script, "w") as f:
            f.write(f"INSERT INTO burst SELECT g, repeat('x', {ROW_BYTES}) FROM generate_series(1, {ROWS // TXNS}) g;\n")
        os.chmod(script, 0o644)
        pgbench = [f"{BIN}/pgbench", "-h", "localhost", "-p", os.environ.get("PGPORT", "54320"),
                   "-U", "postgres", "-n", "-c", "4", "-j", "2", "-t", str(TXNS // 4), "-f", script, "postgres"]
        burst = subprocess.Popen(pgbench, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak, i = rss_before, 0
    while burst.poll() is None or i < 30:
        sent[i] = time.monotonic()
        sql(f"INSERT INTO pulse VALUES ({i})")
        i += 1
        peak = max(peak, worker_rss_mib())
        time.sleep(0.1)
    time.sleep(3)
    peak = max(peak, worker_rss_mib())
    for s in stuck:
        s.close()
    time.sleep(2)
    rss_after = worker_rss_mib()
    reader.join()
    burst_reader.join()
    health = json.loads(subprocess.run(["curl", "-s", f"http://127.0.0.1:{WS_PORT}/health"], capture_output=True).stdout)
    print(f"non-readers={N} burst_rows={ROWS} row_bytes={ROW_BYTES}")
    print(f"worker RSS: before {rss_before:.0f} MiB, peak {peak:.0f} MiB, after the slow clients left {rss_after:.0f} MiB")
    print(f"healthy client: {len(got)} of {i} pulse rows, {len(gaps)} gaps, worst latency {worst[0] * 1000:.0f} ms")
    reasons = {r: burst_gaps.count(r) for r in set(burst_gaps)}
    print(f"prompt reader of burst: {burst_got[0]} of {ROWS // TXNS * TXNS} rows, gaps {reasons}; queue lost {health['queue']['lost_transactions']} transactions")
    sql("DROP TABLE burst, pulse")


if __name__ == "__main__":
    main()
