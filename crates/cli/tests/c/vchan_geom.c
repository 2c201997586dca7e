/* Interop helper for tests/vchan_identity.rs: both ends use Xen's
 * unmodified libxenvchan (and so, via LD_LIBRARY_PATH, xenshare's
 * libxengnttab / libxenevtchn). The server is the source: it sends NBYTES
 * of pseudo-random data and checks that every byte comes back XORed with
 * 0xA5; the client echoes. Ring sizes are chosen by the server.
 *
 *   vchan_geom server PEER PATH READ_MIN WRITE_MIN stream|packet NBYTES
 *   vchan_geom client SERVER PATH MAXPKT stream|packet NBYTES
 *
 * In packet mode both sides derive the same packet sizes (1..MAXPKT) and
 * use libxenvchan_send / libxenvchan_recv (all or nothing), one packet in
 * flight; in stream mode the server writes and reads without blocking and
 * waits for events when neither makes progress.
 * Each side prints "orders READ WRITE": the log2 sizes of its rings.
 * Exit status 0 on success. Written for xenshare's tests. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <libxenvchan.h>

static unsigned long long rng = 0x9e3779b97f4a7c15ULL;

static unsigned next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)(rng >> 24);
}

static unsigned char data_at(long long i)
{
    unsigned long long x = (unsigned long long)i * 0x2545F4914F6CDD1DULL;
    return (unsigned char)(x >> 56);
}

static int fail(const char *what, long long at)
{
    fprintf(stderr, "vchan_geom: %s at byte %lld (errno %s)\n", what, at, strerror(errno));
    return 1;
}

static int server_stream(struct libxenvchan *v, long long n)
{
    static unsigned char out[8192], in[8192];
    long long sent = 0, got = 0;
    int i;

    v->blocking = 0;
    while (got < n) {
        int progress = 0, k;
        if (sent < n) {
            int len = (int)(n - sent < (long long)sizeof(out) ? n - sent : (long long)sizeof(out));
            for (i = 0; i < len; i++)
                out[i] = data_at(sent + i);
            k = libxenvchan_write(v, (char *)out, len);
            if (k < 0)
                return fail("write", sent);
            sent += k;
            progress |= k > 0;
        }
        k = libxenvchan_read(v, (char *)in, sizeof(in));
        if (k < 0)
            return fail("read", got);
        for (i = 0; i < k; i++)
            if (in[i] != (unsigned char)(data_at(got + i) ^ 0xA5))
                return fail("echo differs", got + i);
        got += k;
        progress |= k > 0;
        if (!progress && libxenvchan_wait(v) < 0)
            return fail("wait", got);
    }
    return 0;
}

static int server_packet(struct libxenvchan *v, long long n, int maxpkt)
{
    static unsigned char out[65536], in[65536];
    long long done = 0;
    int i;

    v->blocking = 1;
    while (done < n) {
        int len = 1 + (int)(next() % (unsigned)maxpkt);
        if (len > n - done)
            len = (int)(n - done);
        for (i = 0; i < len; i++)
            out[i] = data_at(done + i);
        if (libxenvchan_send(v, out, len) != len)
            return fail("send", done);
        if (libxenvchan_recv(v, in, len) != len)
            return fail("recv", done);
        for (i = 0; i < len; i++)
            if (in[i] != (unsigned char)(out[i] ^ 0xA5))
                return fail("echo differs", done + i);
        done += len;
    }
    return 0;
}

static int client_echo(struct libxenvchan *v, long long n, int packet, int maxpkt)
{
    static unsigned char buf[65536];
    long long done = 0;
    int i;

    v->blocking = 1;
    while (done < n) {
        int len;
        if (packet) {
            len = 1 + (int)(next() % (unsigned)maxpkt);
            if (len > n - done)
                len = (int)(n - done);
            if (libxenvchan_recv(v, buf, len) != len)
                return fail("recv", done);
        } else {
            int max = (int)(n - done < (long long)sizeof(buf) ? n - done : (long long)sizeof(buf));
            len = libxenvchan_read(v, (char *)buf, max);
            if (len <= 0)
                return fail("read", done);
        }
        for (i = 0; i < len; i++)
            buf[i] ^= 0xA5;
        if (packet) {
            if (libxenvchan_send(v, buf, len) != len)
                return fail("send", done);
        } else {
            int off = 0;
            while (off < len) {
                int k = libxenvchan_write(v, (char *)buf + off, len - off);
                if (k <= 0)
                    return fail("write", done + off);
                off += k;
            }
        }
        done += len;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct libxenvchan *v = NULL;
    int server, packet, rc, maxpkt;
    long long n;

    if (argc < 2)
        return 2;
    server = !strcmp(argv[1], "server");
    if ((server && argc != 8) || (!server && argc != 7)) {
        fprintf(stderr, "usage: see the comment at the top of vchan_geom.c\n");
        return 2;
    }
    if (server) {
        size_t rmin = strtoul(argv[4], NULL, 0), wmin = strtoul(argv[5], NULL, 0);
        packet = !strcmp(argv[6], "packet");
        n = atoll(argv[7]);
        maxpkt = (int)(rmin < wmin ? rmin : wmin);
        if (maxpkt > 65536)
            maxpkt = 65536;
        v = libxenvchan_server_init(NULL, atoi(argv[2]), argv[3], rmin, wmin);
    } else {
        struct timespec ts = { 0, 20 * 1000 * 1000 };
        int i;
        maxpkt = atoi(argv[4]);
        packet = !strcmp(argv[5], "packet");
        n = atoll(argv[6]);
        if (maxpkt < 1 || maxpkt > 65536)
            return 2;
        for (i = 0; i < 500 && !v; i++) {
            v = libxenvchan_client_init(NULL, atoi(argv[2]), argv[3]);
            if (!v)
                nanosleep(&ts, NULL);
        }
    }
    if (!v) {
        fprintf(stderr, "vchan_geom: %s init failed: %s\n", argv[1], strerror(errno));
        return 1;
    }
    /* The ring sizes libxenvchan chose (log2 bytes), for the test. */
    printf("orders %d %d\n", v->read.order, v->write.order);
    fflush(stdout);
    if (server) {
        /* Wait for the client before sending anything. */
        v->blocking = 1;
        while (libxenvchan_is_open(v) == 2)
            libxenvchan_wait(v);
        rc = packet ? server_packet(v, n, maxpkt) : server_stream(v, n);
    } else {
        rc = client_echo(v, n, packet, maxpkt);
    }
    fprintf(stderr, "vchan_geom: %s %s %lld bytes: %s\n", argv[1], argv[5 + server], n,
            rc ? "FAILED" : "ok");
    libxenvchan_close(v);
    return rc;
}
