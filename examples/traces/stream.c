/* A tiny strided stream over a 1 MiB array, for a small real valgrind lackey trace.
 *
 * Pass 1 writes every 16th int (one store per 64-byte line), pass 2 reads and sums
 * every 16th int, pass 3 updates (load + store, or a modify) every 256th int (one
 * per 1 KiB). About 16,384 + 16,384 + 1,024 data accesses to the array, a few
 * hundred pages; the rest of the trace is the C runtime's own accesses.
 */
#include <stdio.h>
#include <stdlib.h>

#define N (1 << 18) /* 2^18 ints = 1 MiB */
#define STRIDE 16   /* ints: one access per 64-byte cache line */

int main(void)
{
    int *a = malloc(N * sizeof *a);
    long sum = 0;
    if (!a)
        return 1;
    for (long i = 0; i < N; i += STRIDE)
        a[i] = (int)i;
    for (long i = 0; i < N; i += STRIDE)
        sum += a[i];
    for (long i = 0; i < N; i += 16 * STRIDE)
        a[i] += 1;
    printf("%ld\n", sum);
    free(a);
    return 0;
}
