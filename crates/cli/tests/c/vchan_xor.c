/* Interop helper for tests/vchan_interop.rs: uses Xen's unmodified
 * libxenvchan (and so, via LD_LIBRARY_PATH, xenshare's libxengnttab /
 * libxenevtchn). It echoes every byte it receives back XORed with 0xA5.
 *
 *   vchan_xor server PEER_DOMID PATH          echo until the peer closes
 *   vchan_xor client SERVER_DOMID PATH NBYTES echo NBYTES, then close
 *
 * Exit status 0 on success. Written for xenshare's tests. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <libxenvchan.h>

static int write_all(struct libxenvchan *v, const char *buf, int len)
{
    while (len > 0) {
        int n = libxenvchan_write(v, buf, len);
        if (n <= 0)
            return -1;
        buf += n;
        len -= n;
    }
    return 0;
}

int main(int argc, char **argv)
{
    static char buf[65536];
    struct libxenvchan *v = NULL;
    long long want = -1, done = 0;
    int i;

    if (argc < 4) {
        fprintf(stderr, "usage: %s server|client DOMID PATH [NBYTES]\n", argv[0]);
        return 2;
    }
    if (!strcmp(argv[1], "server")) {
        v = libxenvchan_server_init(NULL, atoi(argv[2]), argv[3], 65536, 65536);
    } else {
        struct timespec ts = { 0, 20 * 1000 * 1000 };
        if (argc < 5)
            return 2;
        want = atoll(argv[4]);
        for (i = 0; i < 500 && !v; i++) {
            v = libxenvchan_client_init(NULL, atoi(argv[2]), argv[3]);
            if (!v)
                nanosleep(&ts, NULL);
        }
    }
    if (!v) {
        fprintf(stderr, "vchan_xor: %s init failed: %s\n", argv[1], strerror(errno));
        return 1;
    }
    v->blocking = 1;
    while (want < 0 || done < want) {
        int n, max = sizeof(buf);
        if (want >= 0 && want - done < max)
            max = (int)(want - done);
        n = libxenvchan_read(v, buf, max);
        if (n <= 0)
            break;
        for (i = 0; i < n; i++)
            buf[i] ^= (char)0xA5;
        if (write_all(v, buf, n) < 0) {
            fprintf(stderr, "vchan_xor: write failed after %lld bytes\n", done);
            libxenvchan_close(v);
            return 1;
        }
        done += n;
    }
    fprintf(stderr, "vchan_xor: %s echoed %lld bytes\n", argv[1], done);
    libxenvchan_close(v);
    if (want >= 0 && done != want)
        return 1;
    return 0;
}
