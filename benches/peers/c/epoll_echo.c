/*
 * epoll_echo.c: a minimal single-threaded epoll echo server, the practical
 * lower bound on what an echo costs on Linux, to compare echod against.
 *
 * Usage: epoll_echo ADDR     (for example 127.0.0.1:0 or [::1]:0)
 * Prints "listening on IP:PORT" with the port the kernel bound, flushed,
 * then serves until killed. No signal handlers: SIGTERM/SIGINT use the
 * default disposition and end it.
 *
 * Shape, and why:
 * - Level-triggered. One read per readable event and no read that just
 *   returns EAGAIN: epoll reports the socket again if bytes are left, so the
 *   extra "drain until EAGAIN" syscall that edge-triggered code needs is
 *   never made.
 * - One shared 64 KiB read buffer. A connection owns memory only while a
 *   write was short: then the unsent remainder is copied into a malloc'd
 *   buffer and the connection switches from EPOLLIN to EPOLLOUT, so it stops
 *   reading (backpressure) until the remainder drains.
 * - send() with MSG_NOSIGNAL, so a peer that vanished gives EPIPE on that
 *   connection instead of a process-killing SIGPIPE.
 * - Any error on a connection closes that connection only.
 *
 * Build: gcc -O2 -Wall -Wextra -o epoll_echo epoll_echo.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BACKLOG 1024
#define READ_BUF_SIZE (64 * 1024)
#define MAX_EVENTS 256

/* One accepted connection. The listener's epoll data is NULL instead. */
struct conn {
    int fd;
    char *pending;      /* unsent echo bytes; NULL whenever registered for EPOLLIN */
    size_t pending_len; /* bytes in pending */
    size_t pending_off; /* bytes of pending already sent */
};

static char read_buf[READ_BUF_SIZE];

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "epoll_echo: %s: %s\n", what, detail);
    exit(1);
}

/* A malformed ADDR is a usage error: exit 2, like the Rust peers. */
static void bad_addr(const char *arg, const char *why)
{
    fprintf(stderr, "epoll_echo: invalid ADDR \"%s\": %s\n", arg, why);
    exit(2);
}

static void close_conn(struct conn *c)
{
    /* close() also removes the fd from the epoll set (no dup'd fds here). */
    close(c->fd);
    free(c->pending);
    free(c);
}

static int set_events(int ep, struct conn *c, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = c};
    return epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Sends what is left of c->pending. Returns 0 when all of it is sent (and c
 * is back on EPOLLIN), 1 when some is still pending, -1 to close c. */
static int flush_pending(int ep, struct conn *c)
{
    while (c->pending_off < c->pending_len) {
        ssize_t n = send(c->fd, c->pending + c->pending_off,
                         c->pending_len - c->pending_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 1;
            return -1;
        }
        c->pending_off += (size_t)n;
    }
    free(c->pending);
    c->pending = NULL;
    c->pending_len = c->pending_off = 0;
    return set_events(ep, c, EPOLLIN) == 0 ? 0 : -1;
}

/* One read, echoed back. Returns -1 to close c. */
static int on_readable(int ep, struct conn *c)
{
    ssize_t n;
    do {
        n = recv(c->fd, read_buf, sizeof read_buf, 0);
    } while (n < 0 && errno == EINTR);
    if (n == 0)
        return -1; /* FIN: every byte read so far has been echoed */
    if (n < 0)
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;

    size_t len = (size_t)n, sent = 0;
    while (sent < len) {
        ssize_t w = send(c->fd, read_buf + sent, len - sent, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return -1;
        }
        sent += (size_t)w;
    }
    if (sent == len)
        return 0;

    /* Short write: keep the rest and stop reading until it is sent. */
    c->pending = malloc(len - sent);
    if (c->pending == NULL)
        return -1;
    memcpy(c->pending, read_buf + sent, len - sent);
    c->pending_len = len - sent;
    c->pending_off = 0;
    return set_events(ep, c, EPOLLOUT);
}

static void accept_ready(int ep, int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            /* EAGAIN: backlog empty. EMFILE and the like: give up for this
             * event; level-triggered, so epoll reports the listener again. */
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                perror("epoll_echo: accept4");
            return;
        }
        struct conn *c = calloc(1, sizeof *c);
        if (c == NULL) {
            close(fd);
            continue;
        }
        c->fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            perror("epoll_echo: epoll_ctl add");
            close_conn(c);
        }
    }
}

/* Binds and listens on "IP:PORT" or "[IPv6]:PORT"; numeric only. */
static int listen_on(const char *arg)
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
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
    int rc = getaddrinfo(h, colon + 1, &hints, &ai);
    if (rc != 0)
        bad_addr(arg, gai_strerror(rc));

    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket", strerror(errno));
    int one = 1;
    /* Lets a benchmark restart on a fixed port while old sockets sit in TIME_WAIT. */
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        die("setsockopt SO_REUSEADDR", strerror(errno));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, BACKLOG) < 0) {
        fprintf(stderr, "epoll_echo: cannot listen on %s: %s\n", arg, strerror(errno));
        exit(1);
    }
    freeaddrinfo(ai);
    return fd;
}

/* Prints the readiness line with the real port, as the benchmark expects. */
static void announce(int lfd)
{
    struct sockaddr_storage ss;
    socklen_t sslen = sizeof ss;
    char ip[NI_MAXHOST], port[NI_MAXSERV];
    if (getsockname(lfd, (struct sockaddr *)&ss, &sslen) < 0)
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
    int lfd = listen_on(argv[1]);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1", strerror(errno));
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0)
        die("epoll_ctl add listener", strerror(errno));
    announce(lfd);

    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait", strerror(errno));
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) {
                accept_ready(ep, lfd);
                continue;
            }
            /* Each conn appears at most once per batch, and is freed only
             * while handling its own event, so no later entry dangles. */
            int rc;
            if (c->pending != NULL)
                rc = flush_pending(ep, c); /* EPOLLOUT, or ERR/HUP: send reports it */
            else
                rc = on_readable(ep, c); /* EPOLLIN, or ERR/HUP: recv reports it */
            if (rc < 0)
                close_conn(c);
        }
    }
}
