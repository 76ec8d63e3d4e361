/* CPU-bound benchmark guest: double-precision floating point. argv[1] steps (default
 * 60000) of a five-body gravity simulation (symplectic Euler steps, square
 * roots and divisions), then a 48x48 matrix product repeated steps/400 times.
 * Prints the energy before and after and the matrix checksum (%.9f, %.9e), so qemu-user
 * and pyqemu can be compared.
 */
#include <stdio.h>
#include <stdlib.h>

enum { BODIES = 5, N = 48 };

/* the FPU's square root instruction: no libm (and no errno path) to link */
static inline double root(double x)
{
    double r;
#ifdef __aarch64__
    __asm__("fsqrt %d0, %d1" : "=w"(r) : "w"(x));
#else
    __asm__("vsqrt.f64 %P0, %P1" : "=w"(r) : "w"(x));
#endif
    return r;
}

struct body { double x, y, z, vx, vy, vz, m; };

static struct body bodies[BODIES] = {
    {0, 0, 0, 0, 0, 0, 39.47841760435743},
    {4.84, -1.16, -0.10, 0.606, 2.81, -0.025, 0.037},
    {8.34, 4.12, -0.40, -1.01, 1.82, 0.008, 0.011},
    {12.89, -15.11, -0.22, 1.08, 0.868, -0.010, 0.0017},
    {15.37, -25.91, 0.179, 0.979, 0.594, -0.034, 0.0020},
};

static double energy(void)
{
    double e = 0;
    for (int i = 0; i < BODIES; i++) {
        struct body *b = &bodies[i];
        e += 0.5 * b->m * (b->vx * b->vx + b->vy * b->vy + b->vz * b->vz);
        for (int j = i + 1; j < BODIES; j++) {
            struct body *c = &bodies[j];
            double dx = b->x - c->x, dy = b->y - c->y, dz = b->z - c->z;
            e -= b->m * c->m / root(dx * dx + dy * dy + dz * dz);
        }
    }
    return e;
}

static void advance(double dt)
{
    for (int i = 0; i < BODIES; i++) {
        struct body *b = &bodies[i];
        for (int j = i + 1; j < BODIES; j++) {
            struct body *c = &bodies[j];
            double dx = b->x - c->x, dy = b->y - c->y, dz = b->z - c->z;
            double d2 = dx * dx + dy * dy + dz * dz;
            double mag = dt / (d2 * root(d2));
            b->vx -= dx * c->m * mag; b->vy -= dy * c->m * mag; b->vz -= dz * c->m * mag;
            c->vx += dx * b->m * mag; c->vy += dy * b->m * mag; c->vz += dz * b->m * mag;
        }
    }
    for (int i = 0; i < BODIES; i++) {
        struct body *b = &bodies[i];
        b->x += dt * b->vx; b->y += dt * b->vy; b->z += dt * b->vz;
    }
}

static double a[N][N], bm[N][N], c[N][N];

static double matmul(int reps)
{
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            a[i][j] = (double)(i * N + j) / (N * N) - 0.5;
            bm[i][j] = (double)((i + 3 * j) % 17) / 17.0;
        }
    for (int r = 0; r < reps; r++) {
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                double s = 0;
                for (int k = 0; k < N; k++)
                    s += a[i][k] * bm[k][j];
                c[i][j] = s;
            }
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++)
                a[i][j] = c[i][j] * (0.5 / N) + a[i][j] * 0.5;
    }
    double sum = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++)
            sum += a[i][j] * (i + 1) - c[i][j] / (j + 1);
    return sum;
}

int main(int argc, char **argv)
{
    int steps = argc > 1 ? atoi(argv[1]) : 60000;
    printf("%.9f\n", energy());
    for (int s = 0; s < steps; s++)
        advance(0.001);
    printf("%.9f\n", energy());
    printf("%.9e\n", matmul(steps / 400));
    return 0;
}
