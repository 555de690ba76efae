/* allocbench MIB MODE THREADS: how fast can a tmpfs file of MIB MiB get its pages before a dump
 * writes into it? MODE 0: fallocate(FALLOC_FL_KEEP_SIZE) (what ferry does, dump::reserve_pages),
 * 1: a shared mapping with MAP_POPULATE; THREADS splits the file in parts. Then times a write of
 * the whole size over it. Build: cc -O2 -pthread -o allocbench scripts/allocbench.c; run as
 * ./allocbench 1024 0 1 (the file is /dev/shm/alloctest, removed at the end). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e3+t.tv_nsec/1e6;}
static size_t LEN; static int FD;
struct a{off_t off; size_t len; int mode;};
static void *work(void *p){struct a *x=p;
 if(x->mode==0){ if(fallocate(FD,FALLOC_FL_KEEP_SIZE,x->off,x->len)) perror("fallocate"); }
 else { char *m=mmap(0,x->len,PROT_READ|PROT_WRITE,MAP_SHARED|MAP_POPULATE,FD,x->off); if(m==MAP_FAILED) perror("mmap"); munmap(m,x->len);} return 0;}
int main(int argc,char**argv){ LEN=(size_t)atoi(argv[1])<<20; int mode=atoi(argv[2]); int th=atoi(argv[3]);
 char path[]="/dev/shm/alloctest"; unlink(path); FD=open(path,O_RDWR|O_CREAT,0600); if(mode==1) ftruncate(FD,LEN);
 pthread_t t[8]; struct a x[8]; double t0=now();
 for(int i=0;i<th;i++){x[i].off=LEN/th*i; x[i].len=LEN/th; x[i].mode=mode; pthread_create(&t[i],0,work,&x[i]);}
 for(int i=0;i<th;i++) pthread_join(t[i],0);
 double t1=now();
 /* then a write of fresh data over it, as ferry's writer would */
 char *buf=aligned_alloc(4096, 2<<20); memset(buf,1,2<<20);
 double t2=now(); for(size_t o=0;o<LEN;o+=2<<20) pwrite(FD,buf,2<<20,o); double t3=now();
 printf("mode=%s threads=%d alloc %.0f ms, write over it %.0f ms\n", mode?"mmap-populate":"fallocate", th, t1-t0, t3-t2);
 unlink(path);}
