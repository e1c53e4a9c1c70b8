/* The ceiling for one stream: a blocking sendfile(2) loop, nothing else.
 * c_sendfile FILE: listens on 127.0.0.1 (port printed), waits for one byte
 * from one client, sends FILE, prints "secs cpu_secs". */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu(void) {
  struct rusage r;
  getrusage(RUSAGE_SELF, &r);
  return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec + r.ru_stime.tv_usec / 1e6;
}

int main(int argc, char **argv) {
  if (argc != 2)
    return 2;
  int fd = open(argv[1], O_RDONLY);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) < 0)
    return 1;
  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1) < 0)
    return 1;
  getsockname(l, (struct sockaddr *)&a, &al);
  printf("%d\n", ntohs(a.sin_port));
  fflush(stdout);
  int c = accept(l, NULL, NULL);
  char b;
  if (c < 0 || read(c, &b, 1) != 1)
    return 1;
  double t0 = now(), c0 = cpu();
  off_t off = 0;
  while (off < st.st_size)
    if (sendfile(c, fd, &off, st.st_size - off) <= 0)
      return 1;
  close(c);
  printf("%f %f\n", now() - t0, cpu() - c0);
  return 0;
}
