/* Helper for tests/vchan_identity.rs: writes PATH=VALUE through Xen's
 * unmodified libxenstore (which honours XENSTORED_PATH) and prints the
 * outcome: "ok", or the errno name the daemon answered with.
 *
 *   xs_write_errno PATH VALUE
 *
 * Exit status 0 if the write succeeded, 1 if it was refused, 2 on usage
 * or connection errors. Written for xenshare's tests. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <xenstore.h>

int main(int argc, char **argv)
{
    struct xs_handle *h;
    int ok;

    if (argc != 3)
        return 2;
    h = xs_open(0);
    if (!h) {
        fprintf(stderr, "xs_open: %s\n", strerror(errno));
        return 2;
    }
    ok = xs_write(h, XBT_NULL, argv[1], argv[2], strlen(argv[2]));
    if (ok)
        printf("ok\n");
    else
        printf("%s\n", errno == EACCES ? "EACCES" : strerror(errno));
    xs_close(h);
    return ok ? 0 : 1;
}
