/* The guest's end of the live-migration test's TCP streams (vnetbe/tools/migration.py): a static
 * program carried in the guest's initramfs, where there is no Python. Each stream is NBYTES of a
 * generator both ends compute (stream_byte below, stream.py on the peer), so every byte is checked
 * where it arrives, at its offset.
 *
 *   vnb_stream send HOST PORT NBYTES SEED [PACE_US]  connect (retrying), send the stream (64 KiB every
 *                                                    PACE_US: still sending while a migration runs), close
 *   vnb_stream recv HOST PORT NBYTES SEED PACE_US    connect (retrying), read it with SO_RCVBUF large
 *                                                    and 64 KiB every PACE_US: a reader slower than
 *                                                    the network, so its socket holds acknowledged
 *                                                    bytes the device wrote (what a dirty log that
 *                                                    missed RX buffers corrupts at the switch)
 *
 * Prints one line: "STREAM <send|recv> <port> ok <bytes> <seconds>" or "STREAM recv <port> bad
 * <offset> <got> <want>" / "STREAM ... error <what>". Exit 0 only for ok. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* splitmix64 of the 8-byte word's index, the seed mixed in: byte i is byte i % 8 of word i / 8. */
static uint64_t word(uint64_t k, uint64_t seed)
{
    uint64_t x = k * 0x9E3779B97F4A7C15ull ^ seed;
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static void fill(uint8_t *buf, uint64_t off, size_t n, uint64_t seed)
{
    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)(word((off + i) / 8, seed) >> (8 * ((off + i) % 8)));
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int dial(const char *host, int port, int rcvbuf)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1)
        return -1;
    for (int tries = 0; tries < 3000; tries++) {   /* 10 minutes: the peer opens a round when told */
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
            return -1;
        if (rcvbuf)   /* before connect: the window scale is fixed by the SYN */
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
        if (connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
            return fd;
        close(fd);
        usleep(200000);
    }
    return -1;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: vnb_stream send|recv HOST PORT NBYTES SEED [PACE_US]\n");
        return 2;
    }
    int recv_mode = strcmp(argv[1], "recv") == 0;
    int port = atoi(argv[3]);
    uint64_t n = strtoull(argv[4], NULL, 0), seed = strtoull(argv[5], NULL, 0);
    long pace = argc > 6 ? atol(argv[6]) : 0;
    static uint8_t buf[1 << 16], want[1 << 16];
    int fd = dial(argv[2], port, recv_mode ? 8 << 20 : 0);
    if (fd < 0) {
        printf("STREAM %s %d error connect %s\n", argv[1], port, strerror(errno));
        return 1;
    }
    double t0 = now();
    uint64_t done = 0;
    while (done < n) {
        size_t chunk = n - done < sizeof(buf) ? (size_t)(n - done) : sizeof(buf);
        if (recv_mode) {
            ssize_t r = read(fd, buf, chunk);
            if (r <= 0) {
                printf("STREAM recv %d error %s at %llu\n", port, r ? strerror(errno) : "eof", (unsigned long long)done);
                return 1;
            }
            fill(want, done, (size_t)r, seed);
            for (ssize_t i = 0; i < r; i++)
                if (buf[i] != want[i]) {
                    printf("STREAM recv %d bad %llu %u %u\n", port, (unsigned long long)(done + i), buf[i], want[i]);
                    return 1;
                }
            done += (uint64_t)r;
            if (pace)
                usleep((useconds_t)pace);
        } else {
            fill(buf, done, chunk, seed);
            for (size_t off = 0; off < chunk;) {
                ssize_t w = write(fd, buf + off, chunk - off);
                if (w <= 0) {
                    printf("STREAM send %d error %s at %llu\n", port, strerror(errno), (unsigned long long)done);
                    return 1;
                }
                off += (size_t)w;
            }
            done += chunk;
            if (pace)
                usleep((useconds_t)pace);
        }
    }
    close(fd);
    printf("STREAM %s %d ok %llu %.2f\n", argv[1], port, (unsigned long long)done, now() - t0);
    return 0;
}
