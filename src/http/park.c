/* Parked replies: a waiting feed's socket taken out of libmicrohttpd, so that an idle feed
 * costs its own small state and no connection pool (MHD 0.9.75 keeps ~11 KB resident per
 * connection, see server.c). The bookkeeping (the connection's counts, handing the socket
 * back for its next request) is in server.c; here are the two things that need their own
 * headers or thread: the socket's received-byte count, and a thread that waits for parked
 * sockets to take more bytes when a client reads slower than its feed writes. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <netinet/in.h>
#include <linux/tcp.h>   /* glibc's struct tcp_info lacks tcpi_bytes_received */

#include "http_int.h"

struct http_park_waits {
    http_server *srv;
    int          epfd;
    int          wake;           /* eventfd: stop */
    pthread_t    thread;
    bool         started;
    pthread_mutex_t lock;
    http_task   *waiting;        /* linked through ->next (unused while not queued) */
};

bool http_park_received(int fd, uint64_t *bytes) {
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    memset(&ti, 0, sizeof ti);
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0) return false;
    /* A kernel too old to fill the field answers with a shorter struct. */
    if (len < offsetof(struct tcp_info, tcpi_bytes_received) + sizeof ti.tcpi_bytes_received)
        return false;
    *bytes = ti.tcpi_bytes_received;
    return true;
}

/* Takes t off the waiting list; under w->lock. False when it was not there (fired already). */
static bool waits_unlink(struct http_park_waits *w, http_task *t) {
    for (http_task **p = &w->waiting; *p; p = &(*p)->next)
        if (*p == t) {
            *p = t->next;
            t->next = NULL;
            return true;
        }
    return false;
}

static void *waits_main(void *arg) {
    struct http_park_waits *w = arg;
    pthread_setname_np(pthread_self(), "mimeo-park");
    struct epoll_event evs[64];
    for (;;) {
        int n = epoll_wait(w->epfd, evs, 64, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            break;
        }
        bool stop = false;
        for (int i = 0; i < n; i++) {
            http_task *t = evs[i].data.ptr;
            if (!t) {
                stop = true;
                continue;
            }
            pthread_mutex_lock(&w->lock);
            bool mine = waits_unlink(w, t);
            if (mine) {
                epoll_ctl(w->epfd, EPOLL_CTL_DEL, t->fd, NULL);
                if (evs[i].events & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)) t->hangup = true;
            }
            pthread_mutex_unlock(&w->lock);
            if (mine) http_loop_submit(w->srv, t);
        }
        if (stop) break;
    }
    return NULL;
}

int http_park_start(http_server *s) {
    struct http_park_waits *w = calloc(1, sizeof *w);
    if (!w) return -1;
    w->srv = s;
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_mutex_init(&w->lock, NULL);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
    if (w->epfd < 0 || w->wake < 0 || epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->wake, &ev) != 0)
        goto fail;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, (size_t)256 << 10);
    w->started = pthread_create(&w->thread, &attr, waits_main, w) == 0;
    pthread_attr_destroy(&attr);
    if (!w->started) goto fail;
    s->park = w;
    return 0;
fail:
    if (w->epfd >= 0) close(w->epfd);
    if (w->wake >= 0) close(w->wake);
    pthread_mutex_destroy(&w->lock);
    free(w);
    return -1;
}

void http_park_wait_writable(http_server *s, http_task *t) {
    struct http_park_waits *w = s->park;
    pthread_mutex_lock(&w->lock);
    t->hangup = false;
    struct epoll_event ev = { .events = EPOLLOUT | EPOLLRDHUP, .data.ptr = t };
    bool added = !atomic_load(&s->stopping) && epoll_ctl(w->epfd, EPOLL_CTL_ADD, t->fd, &ev) == 0;
    if (added) {
        t->next = w->waiting;
        w->waiting = t;
    } else {
        t->hangup = true;   /* cannot wait (stopping, or no memory): the feed ends */
    }
    pthread_mutex_unlock(&w->lock);
    if (!added) http_loop_submit(s, t);
}

void http_park_fire_all(http_server *s) {
    struct http_park_waits *w = s->park;
    if (!w) return;
    pthread_mutex_lock(&w->lock);
    while (w->waiting) {
        http_task *t = w->waiting;
        w->waiting = t->next;
        t->next = NULL;
        epoll_ctl(w->epfd, EPOLL_CTL_DEL, t->fd, NULL);
        t->hangup = true;
        http_loop_submit(s, t);
    }
    pthread_mutex_unlock(&w->lock);
}

void http_park_stop(http_server *s) {
    struct http_park_waits *w = s->park;
    if (!w) return;
    uint64_t one = 1;
    (void)!write(w->wake, &one, sizeof one);
    pthread_join(w->thread, NULL);
    close(w->epfd);
    close(w->wake);
    pthread_mutex_destroy(&w->lock);
    free(w);
    s->park = NULL;
}
