/*
 * vchan_peer: one end of a vchan built on Xen's own C libxenvchan, the
 * reference peer for xenshare's Rust vchan in the Xen lab (scripts/xen-lab).
 *
 *   vchan_peer server PEER PATH READ_MIN WRITE_MIN SEND_SEED RECV_SEED BYTES CLOSE
 *   vchan_peer client PEER PATH SEND_SEED RECV_SEED BYTES CLOSE
 *
 * PEER is the other end's domain id, PATH the XenStore directory of the
 * vchan (the server publishes ring-ref and event-channel there). Each end
 * sends BYTES bytes of the pattern stream SEND_SEED while it receives BYTES
 * bytes, checking them byte for byte against the pattern stream RECV_SEED
 * (both directions at once, non-blocking; when neither moves it spins a
 * little, then sleeps on the event channel). CLOSE is "first" (close as soon as everything is received)
 * or "wait" (wait until the peer has closed, check it reads as closed with
 * nothing left, then close).
 *
 * The argument list is the same as the Rust roles of xenshare-lab-tests
 * (vchan-server / vchan-client), so the lab can pair any two ends.
 *
 * The pattern stream is splitmix64: each output word gives 8 bytes, least
 * significant first. On success it prints one line
 *   VCHAN-END impl=c role=R sent=N sent_fnv=H received=N received_fnv=H
 * (FNV-1a 64 of the bytes sent and received) and exits 0; on failure it
 * prints "vchan_peer: ..." on stderr and exits 1.
 *
 * Build: cc -O2 -Wall -o vchan_peer vchan_peer.c -lxenvchan  (libxen-dev)
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libxenvchan.h>

#define CHUNK (64 * 1024)
#define TIMEOUT_MS 60000

static const char *role = "?";

static void die(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "vchan_peer %s: ", role);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* ---- the pattern stream (splitmix64) and the checksum (FNV-1a 64) ---- */

struct pattern {
    uint64_t state;
    uint8_t word[8];
    unsigned used;
};

static void pattern_init(struct pattern *p, uint64_t seed)
{
    p->state = seed;
    p->used = 8;
}

static void pattern_fill(struct pattern *p, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p->used == 8) {
            uint64_t z;
            unsigned b;

            p->state += 0x9E3779B97F4A7C15ull;
            z = p->state;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
            z ^= z >> 31;
            for (b = 0; b < 8; b++)
                p->word[b] = (uint8_t)(z >> (8 * b));
            p->used = 0;
        }
        out[i] = p->word[p->used++];
    }
}

static uint64_t fnv(uint64_t h, const uint8_t *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        h ^= d[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

#define FNV_INIT 0xcbf29ce484222325ull

/* ---- waiting ---- */

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Sleeps until an event arrives on the vchan's channel (then re-enables
 * it), or the deadline passes: returns 0, or -1 on timeout. */
static int wait_event(struct libxenvchan *v, int64_t deadline)
{
    struct pollfd pfd = { .fd = libxenvchan_fd_for_select(v), .events = POLLIN };
    int64_t left = deadline - now_ms();
    int r;

    if (left <= 0)
        return -1;
    r = poll(&pfd, 1, (int)left);
    if (r < 0 && errno != EINTR)
        die("poll: %s", strerror(errno));
    if (r <= 0)
        return 0; /* timeout or signal: the caller re-checks the deadline */
    if (libxenvchan_wait(v) < 0)
        die("libxenvchan_wait: %s", strerror(errno));
    return 0;
}

/* Re-checks the rings a while before sleeping: a peer on another CPU
 * usually moves within that, and a wake-up through the event channel costs
 * far more (milliseconds under QEMU TCG). Returns 1 if there is room to
 * write or data to read. */
static int spin_for_peer(struct libxenvchan *v, int sending, int receiving)
{
    for (int i = 0; i < 2000; i++) {
        if (sending && libxenvchan_buffer_space(v) > 0)
            return 1;
        if (receiving && libxenvchan_data_ready(v) > 0)
            return 1;
        if (!libxenvchan_is_open(v))
            return 0;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    return 0;
}

/* ---- the transfer ---- */

struct result {
    size_t sent, received;
    uint64_t sent_fnv, received_fnv;
};

static void pump(struct libxenvchan *v, uint64_t send_seed, uint64_t recv_seed,
                 size_t bytes, struct result *res)
{
    static uint8_t out[CHUNK], in[CHUNK], expect[CHUNK];
    struct pattern tx, rx;
    size_t pend = 0, pend_off = 0;
    int64_t deadline = now_ms() + TIMEOUT_MS;

    pattern_init(&tx, send_seed);
    pattern_init(&rx, recv_seed);
    res->sent = res->received = 0;
    res->sent_fnv = res->received_fnv = FNV_INIT;
    v->blocking = 0;

    while (res->sent < bytes || res->received < bytes) {
        int progress = 0;
        int k;

        if (res->sent < bytes) {
            if (pend_off == pend) {
                pend = bytes - res->sent < CHUNK ? bytes - res->sent : CHUNK;
                pattern_fill(&tx, out, pend);
                pend_off = 0;
            }
            k = libxenvchan_write(v, out + pend_off, pend - pend_off);
            if (k < 0)
                die("libxenvchan_write failed after %zu of %zu bytes (peer closed?)",
                    res->sent, bytes);
            res->sent_fnv = fnv(res->sent_fnv, out + pend_off, (size_t)k);
            pend_off += (size_t)k;
            res->sent += (size_t)k;
            progress |= k > 0;
        }
        if (res->received < bytes) {
            size_t want = bytes - res->received < CHUNK ? bytes - res->received : CHUNK;

            k = libxenvchan_read(v, in, want);
            if (k < 0)
                die("libxenvchan_read failed after %zu of %zu bytes (peer closed early?)",
                    res->received, bytes);
            if (k > 0) {
                pattern_fill(&rx, expect, (size_t)k);
                if (memcmp(in, expect, (size_t)k) != 0) {
                    size_t i = 0;

                    while (in[i] == expect[i])
                        i++;
                    die("byte %zu received is 0x%02x, expected 0x%02x",
                        res->received + i, in[i], expect[i]);
                }
                res->received_fnv = fnv(res->received_fnv, in, (size_t)k);
                res->received += (size_t)k;
                progress = 1;
            }
        }
        if (progress || spin_for_peer(v, res->sent < bytes, res->received < bytes))
            continue;
        if (wait_event(v, deadline) < 0)
            die("timed out: sent %zu, received %zu of %zu bytes",
                res->sent, res->received, bytes);
    }
}

/* Waits until the peer has closed; then nothing must be left to read. */
static void wait_peer_closed(struct libxenvchan *v)
{
    int64_t deadline = now_ms() + TIMEOUT_MS;

    while (libxenvchan_is_open(v))
        if (wait_event(v, deadline) < 0)
            die("the peer did not close within %d ms (is_open stays %d)",
                TIMEOUT_MS, libxenvchan_is_open(v));
    if (libxenvchan_data_ready(v) != 0)
        die("%d bytes left to read after the peer closed", libxenvchan_data_ready(v));
}

static unsigned long long num(const char *s, const char *what)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 0);
    if (errno || !*s || *end)
        die("bad %s: %s", what, s);
    return v;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: vchan_peer server PEER PATH READ_MIN WRITE_MIN SEND_SEED RECV_SEED BYTES first|wait\n"
            "       vchan_peer client PEER PATH SEND_SEED RECV_SEED BYTES first|wait\n");
    exit(2);
}

int main(int argc, char **argv)
{
    struct libxenvchan *v;
    struct result res;
    const char *close_mode;
    uint64_t send_seed, recv_seed;
    size_t bytes;
    int peer, server;

    if (argc < 2)
        usage();
    role = argv[1];
    server = strcmp(role, "server") == 0;
    if (server ? argc != 10 : (strcmp(role, "client") != 0 || argc != 8))
        usage();
    peer = (int)num(argv[2], "PEER");
    {
        char **a = argv + (server ? 6 : 4);

        send_seed = num(a[0], "SEND_SEED");
        recv_seed = num(a[1], "RECV_SEED");
        bytes = (size_t)num(a[2], "BYTES");
        close_mode = a[3];
    }
    if (strcmp(close_mode, "first") != 0 && strcmp(close_mode, "wait") != 0)
        usage();

    if (server)
        v = libxenvchan_server_init(NULL, peer, argv[3],
                                    (size_t)num(argv[4], "READ_MIN"),
                                    (size_t)num(argv[5], "WRITE_MIN"));
    else
        v = libxenvchan_client_init(NULL, peer, argv[3]);
    if (!v)
        die("libxenvchan_%s_init(%d, %s) failed: %s", role, peer, argv[3], strerror(errno));

    pump(v, send_seed, recv_seed, bytes, &res);
    if (strcmp(close_mode, "wait") == 0)
        wait_peer_closed(v);
    libxenvchan_close(v);

    printf("VCHAN-END impl=c role=%s sent=%zu sent_fnv=%016" PRIx64
           " received=%zu received_fnv=%016" PRIx64 "\n",
           role, res.sent, res.sent_fnv, res.received, res.received_fnv);
    return 0;
}
