/* The rate at which this CPU gathers 16 floats from an L1-resident vector by 16-bit indices, four
 * ways (vpgatherdps zmm / ymm, scalar loads + inserts, scalar fma): the floor under any batch-1
 * CSR kernel. gcc -O3 -march=native gather_floor.c -o gather_floor && ./gather_floor */
#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_THREAD_CPUTIME_ID,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(){ float x[4096]; for(int i=0;i<4096;i++)x[i]=i*1e-3f;
 int N=8192; uint16_t*idx=malloc(N*2); float*v=malloc(N*4); for(int i=0;i<N;i++){idx[i]=rand()%4096;v[i]=1e-3f;}
 long reps=20000; double t=now(); __m512 a0=_mm512_setzero_ps(),a1=a0,a2=a0,a3=a0;
 for(long r=0;r<reps;r++) for(int i=0;i<N;i+=64){
  a0=_mm512_fmadd_ps(_mm512_loadu_ps(v+i),_mm512_i32gather_ps(_mm512_cvtepu16_epi32(_mm256_loadu_si256((void*)(idx+i))),x,4),a0);
  a1=_mm512_fmadd_ps(_mm512_loadu_ps(v+i+16),_mm512_i32gather_ps(_mm512_cvtepu16_epi32(_mm256_loadu_si256((void*)(idx+i+16))),x,4),a1);
  a2=_mm512_fmadd_ps(_mm512_loadu_ps(v+i+32),_mm512_i32gather_ps(_mm512_cvtepu16_epi32(_mm256_loadu_si256((void*)(idx+i+32))),x,4),a2);
  a3=_mm512_fmadd_ps(_mm512_loadu_ps(v+i+48),_mm512_i32gather_ps(_mm512_cvtepu16_epi32(_mm256_loadu_si256((void*)(idx+i+48))),x,4),a3);}
 double dt=now()-t; printf("zmm gather: %.3f ns/elem  (%.2f cycles @3.26GHz) %f\n", dt/(reps*(double)N)*1e9, dt/(reps*(double)N)*3.26e9, _mm512_reduce_add_ps(a0+a1+a2+a3));
 __m256 b0=_mm256_setzero_ps(),b1=b0,b2=b0,b3=b0; t=now();
 for(long r=0;r<reps;r++) for(int i=0;i<N;i+=32){
  b0=_mm256_fmadd_ps(_mm256_loadu_ps(v+i),_mm256_i32gather_ps(x,_mm256_cvtepu16_epi32(_mm_loadu_si128((void*)(idx+i))),4),b0);
  b1=_mm256_fmadd_ps(_mm256_loadu_ps(v+i+8),_mm256_i32gather_ps(x,_mm256_cvtepu16_epi32(_mm_loadu_si128((void*)(idx+i+8))),4),b1);
  b2=_mm256_fmadd_ps(_mm256_loadu_ps(v+i+16),_mm256_i32gather_ps(x,_mm256_cvtepu16_epi32(_mm_loadu_si128((void*)(idx+i+16))),4),b2);
  b3=_mm256_fmadd_ps(_mm256_loadu_ps(v+i+24),_mm256_i32gather_ps(x,_mm256_cvtepu16_epi32(_mm_loadu_si128((void*)(idx+i+24))),4),b3);}
 dt=now()-t; __m256 bs=b0+b1+b2+b3; printf("ymm gather: %.3f ns/elem  (%.2f cycles) %f\n", dt/(reps*(double)N)*1e9, dt/(reps*(double)N)*3.26e9, bs[0]);
 /* scalar-insert */
 t=now(); a0=a1=_mm512_setzero_ps();
 for(long r=0;r<reps;r++) for(int i=0;i<N;i+=16){ const uint16_t*e=idx+i;
  __m128 q0=_mm_setr_ps(x[e[0]],x[e[1]],x[e[2]],x[e[3]]),q1=_mm_setr_ps(x[e[4]],x[e[5]],x[e[6]],x[e[7]]),q2=_mm_setr_ps(x[e[8]],x[e[9]],x[e[10]],x[e[11]]),q3=_mm_setr_ps(x[e[12]],x[e[13]],x[e[14]],x[e[15]]);
  __m512 g=_mm512_insertf32x4(_mm512_insertf32x4(_mm512_insertf32x4(_mm512_castps128_ps512(q0),q1,1),q2,2),q3,3);
  a0=_mm512_fmadd_ps(_mm512_loadu_ps(v+i),g,a0);}
 dt=now()-t; printf("scalar insert: %.3f ns/elem (%.2f cycles) %f\n", dt/(reps*(double)N)*1e9, dt/(reps*(double)N)*3.26e9, _mm512_reduce_add_ps(a0));
 /* scalar fma */
 t=now(); float s0=0,s1=0,s2=0,s3=0;
 for(long r=0;r<reps;r++) for(int i=0;i<N;i+=4){ s0+=v[i]*x[idx[i]]; s1+=v[i+1]*x[idx[i+1]]; s2+=v[i+2]*x[idx[i+2]]; s3+=v[i+3]*x[idx[i+3]]; }
 dt=now()-t; printf("scalar fma: %.3f ns/elem (%.2f cycles) %f\n", dt/(reps*(double)N)*1e9, dt/(reps*(double)N)*3.26e9, s0+s1+s2+s3);
}
