/* The ceiling for one stream: a blocking HTTP/1.1 server that answers
 * "GET /name" with a blocking sendfile(2) loop, one connection at a time
 * (keep-alive until the client closes). Nothing else: no event loop, no
 * checks beyond what the benchmark needs.
 *   c_sendfile ROOT PORT */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static void serve(int c, const char *root) {
  char head[8192];
  size_t len = 0;
  for (;;) {
    char *end;
    head[len] = 0;
    while (!(end = strstr(head, "\r\n\r\n"))) {
      ssize_t r = len < sizeof head - 1 ? read(c, head + len, sizeof head - 1 - len) : -1;
      if (r <= 0)
        return;
      len += (size_t)r;
      head[len] = 0;
    }
    char name[256], file[PATH_MAX];
    if (sscanf(head, "GET /%255s HTTP/1.", name) != 1 || strstr(name, ".."))
      return;
    snprintf(file, sizeof file, "%s/%s", root, name);
    int fd = open(file, O_RDONLY);
    struct stat st;
    if (fd < 0)
      return;
    if (fstat(fd, &st) < 0) {
      close(fd);
      return;
    }
    char reply[256];
    int n = snprintf(reply, sizeof reply,
                     "HTTP/1.1 200 OK\r\nContent-Length: %lld\r\nContent-Type: application/octet-stream\r\n\r\n",
                     (long long)st.st_size);
    off_t off = 0;
    if (send(c, reply, (size_t)n, MSG_NOSIGNAL | (st.st_size ? MSG_MORE : 0)) == n)
      while (off < st.st_size)
        if (sendfile(c, fd, &off, (size_t)(st.st_size - off)) <= 0)
          break;
    close(fd);
    if (off < st.st_size)
      return; /* the client went away */
    size_t used = (size_t)(end + 4 - head);
    memmove(head, end + 4, len - used);
    len -= used;
  }
}

int main(int argc, char **argv) {
  if (argc != 3)
    return 2;
  signal(SIGPIPE, SIG_IGN);
  int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2])),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 128) < 0) {
    perror("c_sendfile");
    return 1;
  }
  for (;;) {
    int c = accept(l, NULL, NULL);
    if (c < 0)
      continue;
    serve(c, argv[1]);
    close(c);
  }
}
