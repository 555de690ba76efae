#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
int main(int c,char**v){size_t len=(size_t)atoi(v[1])<<20;char*p=mmap(0,len,3,MAP_PRIVATE|MAP_ANONYMOUS,-1,0);
for(size_t i=0;i<len;i+=4096)p[i]=i|1; pause();}
