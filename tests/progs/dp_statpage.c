/*
 * tests/deploy.rs (stats page permissions): a process that publishes a stats page when
 * told to. It waits for a line on stdin, opens one TCP socket (the shim publishes the
 * page of a process when it first tracks a socket), prints "ready <pid>", and stays
 * until stdin ends.
 */
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
    char line[64];
    if (!fgets(line, sizeof line, stdin))
        return 1;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) {
        perror("dp_statpage: socket");
        return 1;
    }
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    while (fgets(line, sizeof line, stdin))
        ;
    close(s);
    return 0;
}
