/*
 * fpu: CPU register state, checked by computation.
 *
 * A chaotic, deterministic loop (logistic maps: AVX2/FMA in four ymm registers, x87 in long
 * double, integer xorshift chains in general registers) runs in fixed-length epochs, with
 * non-default MXCSR and x87 control word rounding modes. A reference epoch is computed before
 * ready; after ready the loop keeps running, so the checkpoint lands in the middle of an epoch
 * with every register live. Chaotic maps amplify any bit that differs, so each epoch's result must
 * be bit-identical to the reference. On go (checked between epochs) the workload also compares
 * MXCSR, the x87 control word, XCR0 and the fs base (TLS) with their old values.
 */
#include "common.h"
#include <immintrin.h>
#include <asm/prctl.h>
#include <sys/syscall.h>

#define EPOCH_ITERS 20000000L

struct result {
	double v[16];
	long double x[2];
	uint64_t g[3];
};

static __thread uint64_t tls_marker = 0x7157ab1e;

static void __attribute__((noinline)) epoch(struct result *out, long iters)
{
	__m256d a = _mm256_set_pd(0.11, 0.12, 0.13, 0.14);
	__m256d b = _mm256_set_pd(0.21, 0.22, 0.23, 0.24);
	__m256d c = _mm256_set_pd(0.31, 0.32, 0.33, 0.34);
	__m256d d = _mm256_set_pd(0.41, 0.42, 0.43, 0.44);
	const __m256d r = _mm256_set_pd(3.99, 3.98, 3.97, 3.96);
	long double x = 0.3L, y = 0.7L;
	uint64_t s = 0x9e3779b97f4a7c15ULL, t = 0x243f6a8885a308d3ULL, sum = 0;
	for (long i = 0; i < iters; i++) {
		/* x' = r*x*(1-x) = -(r*x)*x + r*x */
		__m256d ra = _mm256_mul_pd(r, a), rb = _mm256_mul_pd(r, b);
		__m256d rc = _mm256_mul_pd(r, c), rd = _mm256_mul_pd(r, d);
		a = _mm256_fnmadd_pd(ra, a, ra);
		b = _mm256_fnmadd_pd(rb, b, rb);
		c = _mm256_fnmadd_pd(rc, c, rc);
		d = _mm256_fnmadd_pd(rd, d, rd);
		x = 3.97L * x * (1.0L - x);
		y = 3.93L * y * (1.0L - y);
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		t = t * 6364136223846793005ULL + 1442695040888963407ULL;
		sum += s ^ (t >> 3);
	}
	memset(out, 0, sizeof *out); /* long double and the struct have padding bytes */
	_mm256_storeu_pd(&out->v[0], a);
	_mm256_storeu_pd(&out->v[4], b);
	_mm256_storeu_pd(&out->v[8], c);
	_mm256_storeu_pd(&out->v[12], d);
	memcpy(&out->x[0], &x, 10);
	memcpy(&out->x[1], &y, 10);
	out->g[0] = s;
	out->g[1] = t;
	out->g[2] = sum;
}

static uint16_t get_fcw(void)
{
	uint16_t cw;
	__asm__ volatile("fnstcw %0" : "=m"(cw));
	return cw;
}

static void set_fcw(uint16_t cw)
{
	__asm__ volatile("fldcw %0" : : "m"(cw));
}

static uint64_t get_xcr0(void)
{
	uint32_t lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return ((uint64_t)hi << 32) | lo;
}

static unsigned long get_fs_base(void)
{
	unsigned long fs = 0;
	syscall(SYS_arch_prctl, ARCH_GET_FS, &fs);
	return fs;
}

int main(int argc, char **argv)
{
	workload_init(argc, argv);
	if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
		die_setup("this CPU lacks AVX2/FMA");

	/* round toward zero, flush-to-zero, denormals-are-zero; x87: round down, 64-bit precision */
	const uint32_t mxcsr0 = (_mm_getcsr() & ~0x6000u) | 0x6000u | 0x8040u;
	_mm_setcsr(mxcsr0);
	const uint16_t fcw0 = (uint16_t)((get_fcw() & ~0x0f00u) | 0x0300u | 0x0400u);
	set_fcw(fcw0);
	const uint64_t xcr0 = get_xcr0();
	const unsigned long fs0 = get_fs_base();
	uint64_t *const tls_addr0 = &tls_marker;

	struct result ref, again;
	double t0 = mono_now();
	epoch(&ref, EPOCH_ITERS);
	double t1 = mono_now();
	epoch(&again, EPOCH_ITERS);
	if (memcmp(&ref, &again, sizeof ref) != 0)
		die_setup("two reference epochs differ: the loop is not deterministic");
	fprintf(stderr, "fpu: epoch of %ld iterations takes %.0f ms; mxcsr %#x fcw %#x xcr0 %#llx fs %#lx\n",
		EPOCH_ITERS, (t1 - t0) * 1e3, mxcsr0, fcw0, (unsigned long long)xcr0, fs0);

	signal_ready();
	long epochs = 0, bad = 0;
	while (!go) {
		struct result r;
		epoch(&r, EPOCH_ITERS);
		epochs++;
		if (memcmp(&r, &ref, sizeof r) != 0) {
			if (bad++ == 0)
				fail("epoch %ld after ready: result differs from the reference (v0 %a vs %a, x0 %La vs %La, g0 %#llx vs %#llx)",
				     epochs, r.v[0], ref.v[0], r.x[0], ref.x[0], (unsigned long long)r.g[0],
				     (unsigned long long)ref.g[0]);
		}
	}
	fprintf(stderr, "fpu: %ld epochs after ready, %ld differed\n", epochs, bad);
	CHECK(epochs > 0, "no epoch completed after ready");
	uint32_t mxcsr = _mm_getcsr() & ~0x3fu; /* ignore the sticky exception flags */
	CHECK(mxcsr == (mxcsr0 & ~0x3fu), "MXCSR is %#x, was %#x", mxcsr, mxcsr0 & ~0x3fu);
	CHECK(get_fcw() == fcw0, "x87 control word is %#x, was %#x", get_fcw(), fcw0);
	CHECK(get_xcr0() == xcr0, "XCR0 is %#llx, was %#llx", (unsigned long long)get_xcr0(), (unsigned long long)xcr0);
	CHECK(get_fs_base() == fs0, "fs base is %#lx, was %#lx", get_fs_base(), fs0);
	CHECK(&tls_marker == tls_addr0 && tls_marker == 0x7157ab1e, "TLS variable moved or changed");
	finish();
}
