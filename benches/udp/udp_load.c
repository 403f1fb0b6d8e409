/*
 * udp_load.c: the closed-loop UDP echo client of benches/udp/run.py.
 *
 * Usage: udp_load ADDR FLOWS SIZE WARMUP_S MEASURE_S SERVER_PID
 *
 * FLOWS connected UDP sockets (one source port each, so FLOWS flows), each
 * with exactly one datagram of SIZE bytes in flight: a reply that matches
 * the datagram in flight byte for byte is counted and the next one sent at
 * once. One thread and one epoll set; C so that the client is cheap next
 * to the servers it measures (a Python client would be the bottleneck).
 *
 * A flow whose reply does not come within 50 ms sends a new datagram
 * (counted as a timeout): xinetd's echo discards datagrams queued behind
 * a reply, and a lost datagram must not stall its flow for the rest of the
 * run. A reply that is not the one in flight (a late one) is ignored and
 * counted.
 *
 * After WARMUP_S seconds the measured window of MEASURE_S seconds starts;
 * at its start and end the client reads utime + stime of SERVER_PID from
 * /proc/PID/stat (in 10 ms ticks) and the time its threads ran from
 * /proc/PID/task/TID/schedstat (in ns, the scheduler's exact account), so
 * the server's CPU is taken over exactly the window the replies are
 * counted in. Prints one line of key=value pairs on stdout.
 * Exit status: 0 when the run completed (whatever was lost), 1 on a system
 * error, 2 on a usage error.
 *
 * Build: gcc -O2 -Wall -Wextra -o udp_load udp_load.c
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FLOWS 1024
#define MAX_SIZE 65507
#define TIMEOUT_NS (50 * 1000 * 1000LL)

struct flow {
    int fd;
    uint64_t seq;         /* sequence number of the datagram in flight */
    long long sent_at;    /* when it was sent, ns */
    unsigned char *out;   /* the datagram in flight */
};

static unsigned char in[MAX_SIZE + 1];

static void die(const char *what)
{
    fprintf(stderr, "udp_load: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void usage(const char *why)
{
    fprintf(stderr, "udp_load: %s\nusage: udp_load ADDR FLOWS SIZE WARMUP_S MEASURE_S SERVER_PID\n", why);
    exit(2);
}

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* utime + stime of a process, in clock ticks; -1 when unreadable. */
static long long cpu_ticks(int pid)
{
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p)
        return -1;
    /* After ") ": state is field 3; utime and stime are fields 14 and 15. */
    unsigned long long utime, stime;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return -1;
    return (long long)(utime + stime);
}

/* Time the process's threads have run, in ns, from /proc/PID/task/TID/schedstat
 * (the scheduler's own account, exact where /proc/PID/stat counts ticks);
 * -1 when unreadable. */
static long long cpu_ns(int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *dir = opendir(path);
    if (!dir)
        return -1;
    long long total = 0;
    struct dirent *d;
    while ((d = readdir(dir)) != NULL) {
        if (d->d_name[0] == '.')
            continue;
        char file[320];
        snprintf(file, sizeof file, "/proc/%d/task/%s/schedstat", pid, d->d_name);
        FILE *f = fopen(file, "r");
        if (!f)
            continue;
        long long ns;
        if (fscanf(f, "%lld", &ns) == 1)
            total += ns;
        fclose(f);
    }
    closedir(dir);
    return total;
}

/* Fills the datagram for `seq`: the sequence number, then bytes that vary with it. */
static void fill(unsigned char *buf, size_t size, uint64_t seq)
{
    for (size_t i = 0; i < size; i++)
        buf[i] = (unsigned char)(i * 31 + seq * 7);
    memcpy(buf, &seq, size < 8 ? size : 8);
}

static int send_next(struct flow *fl, size_t size, uint64_t seq)
{
    fl->seq = seq;
    fill(fl->out, size, seq);
    fl->sent_at = now_ns();
    ssize_t n = send(fl->fd, fl->out, size, 0);
    return n == (ssize_t)size ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc != 7)
        usage("expected 6 arguments");
    const char *addr = argv[1];
    int flows = atoi(argv[2]);
    long size = atol(argv[3]);
    double warmup = atof(argv[4]), measure = atof(argv[5]);
    int server_pid = atoi(argv[6]);
    if (flows < 1 || flows > MAX_FLOWS)
        usage("FLOWS must be 1 to 1024");
    if (size < 8 || size > MAX_SIZE)
        usage("SIZE must be 8 to 65507");
    if (warmup < 0 || measure <= 0)
        usage("bad WARMUP_S or MEASURE_S");

    char host[256];
    const char *colon = strrchr(addr, ':');
    if (!colon || (size_t)(colon - addr) >= sizeof host)
        usage("ADDR must be IP:PORT");
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    char *h = host;
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        host[hl - 1] = '\0';
        h = host + 1;
    }
    struct addrinfo hints = {0}, *ai;
    hints.ai_socktype = SOCK_DGRAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    if (getaddrinfo(h, colon + 1, &hints, &ai) != 0)
        usage("ADDR does not parse");

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    static struct flow fl[MAX_FLOWS];
    for (int i = 0; i < flows; i++) {
        fl[i].fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fl[i].fd < 0)
            die("socket");
        if (connect(fl[i].fd, ai->ai_addr, ai->ai_addrlen) < 0)
            die("connect");
        fl[i].out = malloc((size_t)size);
        if (!fl[i].out)
            die("malloc");
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fl[i].fd, &ev) < 0)
            die("epoll_ctl");
    }
    freeaddrinfo(ai);

    uint64_t next_seq = 1;
    unsigned long long received = 0, in_window = 0, timeouts = 0, late = 0, mismatched = 0,
                       send_errors = 0, refused = 0;
    for (int i = 0; i < flows; i++)
        if (send_next(&fl[i], (size_t)size, next_seq++) < 0)
            send_errors++;

    long long start = now_ns();
    long long window_start = start + (long long)(warmup * 1e9);
    long long window_end = window_start + (long long)(measure * 1e9);
    long long ticks_start = -1, ticks_end = -1, t_start = 0, t_end = 0;
    long long ns_start = -1, ns_end = -1;
    int in_measure = 0;
    long long last_scan = start;
    struct epoll_event events[MAX_FLOWS];

    for (;;) {
        long long t = now_ns();
        if (!in_measure && t >= window_start) {
            in_measure = 1;
            ticks_start = cpu_ticks(server_pid);
            ns_start = cpu_ns(server_pid);
            t_start = now_ns();
        }
        if (t >= window_end) {
            ticks_end = cpu_ticks(server_pid);
            ns_end = cpu_ns(server_pid);
            t_end = now_ns();
            break;
        }
        int n = epoll_wait(ep, events, flows, 10);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            struct flow *f = &fl[events[k].data.u32];
            for (;;) {
                ssize_t got = recv(f->fd, in, sizeof in, 0);
                if (got < 0) {
                    if (errno == EAGAIN || errno == EWOULDBLOCK)
                        break;
                    if (errno == EINTR)
                        continue;
                    if (errno == ECONNREFUSED) {
                        refused++;
                        break;
                    }
                    die("recv");
                }
                uint64_t seq = 0;
                if (got >= 8)
                    memcpy(&seq, in, 8);
                if (seq != f->seq) {
                    late++;
                    continue;
                }
                if (got != size || memcmp(in, f->out, (size_t)size) != 0) {
                    mismatched++;
                    continue;
                }
                received++;
                if (in_measure)
                    in_window++;
                if (send_next(f, (size_t)size, next_seq++) < 0)
                    send_errors++;
            }
        }
        /* Timeouts: at most every 10 ms, after the replies already queued
         * were read (so a client that was descheduled does not take its own
         * stall for losses), a flow silent for 50 ms sends a new datagram. */
        t = now_ns();
        if (t - last_scan >= 10 * 1000 * 1000LL) {
            last_scan = t;
            for (int i = 0; i < flows; i++) {
                if (t - fl[i].sent_at >= TIMEOUT_NS) {
                    timeouts++;
                    if (send_next(&fl[i], (size_t)size, next_seq++) < 0)
                        send_errors++;
                }
            }
        }
    }

    double window_s = (double)(t_end - t_start) / 1e9;
    long hz = sysconf(_SC_CLK_TCK);
    long long ticks = (ticks_start >= 0 && ticks_end >= 0) ? ticks_end - ticks_start : -1;
    long long ns = (ns_start >= 0 && ns_end >= 0) ? ns_end - ns_start : -1;
    printf("flows=%d size=%ld window_s=%.4f in_window=%llu received=%llu timeouts=%llu late=%llu "
           "mismatched=%llu send_errors=%llu refused=%llu server_ticks=%lld clk_tck=%ld "
           "server_ns=%lld\n",
           flows, size, window_s, in_window, received, timeouts, late, mismatched, send_errors,
           refused, ticks, hz, ns);
    return 0;
}
