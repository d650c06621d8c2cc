/* One monotonic clock in nanoseconds for every C file that times something. */
#ifndef VNB_TIME_H
#define VNB_TIME_H

#include <stdint.h>
#include <time.h>

static inline int64_t vnb_now_ns(void)
{
    struct timespec ts;
    /* CLOCK_MONOTONIC cannot fail with a valid pointer. */
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#endif
