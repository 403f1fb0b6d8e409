/*
 * udp_echo.c: the plainest UDP echo server (RFC 862), the lower bound on
 * what a datagram echo costs on Linux, to compare echod's --udp against.
 *
 * Usage: udp_echo ADDR     (for example 127.0.0.1:0 or [::1]:0)
 * Prints "listening on IP:PORT" with the port the kernel bound, flushed,
 * then serves until killed. No signal handlers: SIGTERM/SIGINT use the
 * default disposition and end it. Exit status: 1 when it cannot bind,
 * 2 on a usage error (a missing or malformed ADDR).
 *
 * Shape, and why:
 * - One blocking socket, one thread: recvfrom into one 64 KiB buffer (the
 *   largest datagram, 65,527 bytes over IPv6, fits whole), sendto straight
 *   back. Two system calls per datagram and no event loop at all: nothing
 *   cheaper echoes one datagram at a time (recvmmsg/sendmmsg batching is a
 *   different shape and left out on purpose).
 * - No reflection guards (privileged source ports, broadcast sources, a
 *   reply rate) and no counters: echod pays for those, and this is the
 *   floor it is measured against. Do not run it on a reachable address.
 * - A failed sendto (send buffer full, no route) drops that reply and goes
 *   on, as a datagram service does; a blocking socket mostly waits instead.
 *
 * Build: gcc -O2 -Wall -Wextra -o udp_echo udp_echo.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE (64 * 1024)

static char buf[BUF_SIZE];

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "udp_echo: %s: %s\n", what, detail);
    exit(1);
}

/* A malformed ADDR is a usage error: exit 2, like the other peers. */
static void bad_addr(const char *arg, const char *why)
{
    fprintf(stderr, "udp_echo: invalid ADDR \"%s\": %s\n", arg, why);
    exit(2);
}

/* Binds a UDP socket to "IP:PORT" or "[IPv6]:PORT"; numeric only. */
static int bind_to(const char *arg)
{
    char host[256];
    const char *colon = strrchr(arg, ':');
    if (colon == NULL || (size_t)(colon - arg) >= sizeof host)
        bad_addr(arg, "expected IP:PORT");
    size_t hlen = (size_t)(colon - arg);
    memcpy(host, arg, hlen);
    host[hlen] = '\0';
    char *h = host;
    if (hlen >= 2 && host[0] == '[' && host[hlen - 1] == ']') {
        host[hlen - 1] = '\0';
        h = host + 1;
    }

    struct addrinfo hints = {0}, *ai;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
    int rc = getaddrinfo(h, colon + 1, &hints, &ai);
    if (rc != 0)
        bad_addr(arg, gai_strerror(rc));

    int fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket", strerror(errno));
    /* No SO_REUSEADDR: on UDP it would let another socket share the port. */
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        fprintf(stderr, "udp_echo: cannot bind %s: %s\n", arg, strerror(errno));
        exit(1);
    }
    freeaddrinfo(ai);
    return fd;
}

/* Prints the readiness line with the real port, as the benchmark expects. */
static void announce(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof ss;
    char ip[NI_MAXHOST], port[NI_MAXSERV];
    if (getsockname(fd, (struct sockaddr *)&ss, &sslen) < 0)
        die("getsockname", strerror(errno));
    int rc = getnameinfo((struct sockaddr *)&ss, sslen, ip, sizeof ip, port,
                         sizeof port, NI_NUMERICHOST | NI_NUMERICSERV);
    if (rc != 0)
        die("getnameinfo", gai_strerror(rc));
    if (ss.ss_family == AF_INET6)
        printf("listening on [%s]:%s\n", ip, port);
    else
        printf("listening on %s:%s\n", ip, port);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s ADDR   (for example 127.0.0.1:0)\n", argv[0]);
        return 2;
    }
    int fd = bind_to(argv[1]);
    announce(fd);

    for (;;) {
        struct sockaddr_storage from;
        socklen_t fromlen = sizeof from;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fromlen);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("recvfrom", strerror(errno));
        }
        /* An error drops this reply only. (No handler is installed, so
         * EINTR cannot happen here.) */
        (void)sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, fromlen);
    }
}
