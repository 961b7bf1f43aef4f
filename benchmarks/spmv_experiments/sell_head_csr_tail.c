/* A hybrid: the first K nonzeros of each row in each 32-column panel as SELL-16 slots (vpermt2ps),
 * the rest as CSR; against plain CSR, cold (after a 64 MB sweep) and warm.
 * gcc -O3 -march=native sell_head_csr_tail.c -o hk -lm && ./hk 0.1 2 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>
#define R 4096
#define C 4096
#define PW 32
#define NP (C/PW)
#define L 16
static double now(){struct timespec t;clock_gettime(CLOCK_THREAD_CPUTIME_ID,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static float *flushbuf;
static void flush(){ volatile float s=0; for(long i=0;i<16L*1024*1024;i+=16) s+=flushbuf[i]; }
static inline __m512 xg16(const float*xp,const uint16_t*e){
 __m128 q0=_mm_setr_ps(xp[e[0]],xp[e[1]],xp[e[2]],xp[e[3]]);
 __m128 q1=_mm_setr_ps(xp[e[4]],xp[e[5]],xp[e[6]],xp[e[7]]);
 __m128 q2=_mm_setr_ps(xp[e[8]],xp[e[9]],xp[e[10]],xp[e[11]]);
 __m128 q3=_mm_setr_ps(xp[e[12]],xp[e[13]],xp[e[14]],xp[e[15]]);
 return _mm512_insertf32x4(_mm512_insertf32x4(_mm512_insertf32x4(_mm512_castps128_ps512(q0),q1,1),q2,2),q3,3);}
static inline float rowdot(const int64_t a,const int64_t b,const uint16_t*ci,const float*v,const float*x){
 __m512 a0=_mm512_setzero_ps(),a1=a0;float t=0;int64_t i=a;
  for(;i+32<=b;i+=32){a0=_mm512_fmadd_ps(_mm512_loadu_ps(v+i),xg16(x,ci+i),a0);a1=_mm512_fmadd_ps(_mm512_loadu_ps(v+i+16),xg16(x,ci+i+16),a1);}
  for(;i+16<=b;i+=16)a0=_mm512_fmadd_ps(_mm512_loadu_ps(v+i),xg16(x,ci+i),a0);
  for(;i<b;i++)t+=v[i]*x[ci[i]];
  return _mm512_reduce_add_ps(_mm512_add_ps(a0,a1))+t;}
void csr(const int64_t*rp,const uint16_t*ci,const float*v,const float*x,float*y){for(int r=0;r<R;r++)y[r]=rowdot(rp[r],rp[r+1],ci,v,x);}
/* fixed-K head: per slice, per panel, K slots of (16 values, 16 byte idx) */
static inline __m512 slot(const float*vp,const uint8_t*ip,__m512 x0,__m512 x1,__m512 acc){
 return _mm512_fmadd_ps(_mm512_loadu_ps(vp),_mm512_permutex2var_ps(x0,_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)ip)),x1),acc);}
void hk(int K,const float*sv,const uint8_t*si,const int64_t*rp,const uint16_t*ci,const float*v,const float*x,float*y){
 const float*vp=sv;const uint8_t*ip=si;
 for(int q=0;q<R/L;q++){__m512 a0=_mm512_setzero_ps(),a1=a0;
  if(K==1){for(int p=0;p<NP;p+=2){
     a0=slot(vp,ip,_mm512_loadu_ps(x+p*PW),_mm512_loadu_ps(x+p*PW+16),a0);
     a1=slot(vp+16,ip+16,_mm512_loadu_ps(x+p*PW+32),_mm512_loadu_ps(x+p*PW+48),a1); vp+=32;ip+=32;}}
  else if(K==2){for(int p=0;p<NP;p++){__m512 x0=_mm512_loadu_ps(x+p*PW),x1=_mm512_loadu_ps(x+p*PW+16);
     a0=slot(vp,ip,x0,x1,a0); a1=slot(vp+16,ip+16,x0,x1,a1); vp+=32;ip+=32;}}
  else {for(int p=0;p<NP;p++){__m512 x0=_mm512_loadu_ps(x+p*PW),x1=_mm512_loadu_ps(x+p*PW+16);
     for(int s=0;s<K;s++){a0=slot(vp,ip,x0,x1,a0);vp+=16;ip+=16;}}}
  float tmp[16]; _mm512_storeu_ps(tmp,_mm512_add_ps(a0,a1));
  for(int l=0;l<L;l++){int r=q*L+l;y[r]=tmp[l]+rowdot(rp[r],rp[r+1],ci,v,x);}}}
int cmpd(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
int main(int argc,char**argv){double dens=argc>1?atof(argv[1]):0.1;int K=argc>2?atoi(argv[2]):2;srand(1);
 flushbuf=malloc(64L<<20);for(long i=0;i<16L<<20;i++)flushbuf[i]=1;
 float*W=calloc((size_t)R*C,4);float*x=malloc(C*4);for(int i=0;i<C;i++)x[i]=rand()/(float)RAND_MAX-0.5f;
 for(size_t i=0;i<(size_t)R*C;i++) if(rand()<dens*RAND_MAX) W[i]=rand()/(float)RAND_MAX-0.5f;
 size_t cap=(size_t)R*C;
 int64_t*rp=malloc((R+1)*8);uint16_t*ci=malloc(cap*2);float*v=malloc(cap*4);long n=0;
 for(int r=0;r<R;r++){rp[r]=n;for(int c=0;c<C;c++){float w=W[(size_t)r*C+c];if(w!=0){ci[n]=c;v[n]=w;n++;}}}rp[R]=n;
 size_t nslots=(size_t)R/L*NP*K; float*sv=calloc(nslots*16,4); uint8_t*si=calloc(nslots*16,1);
 int64_t*rp2=malloc((R+1)*8);uint16_t*ci2=malloc(cap*2);float*v2=malloc(cap*4);char*used=calloc(cap,1);long cov=0;
 for(int q=0;q<R/L;q++)for(int p=0;p<NP;p++){size_t base=((size_t)q*NP+p)*K;
   for(int l=0;l<L;l++){int f=0;for(int c=0;c<PW&&f<K;c++){size_t g=(size_t)(q*L+l)*C+p*PW+c;if(W[g]!=0){sv[(base+f)*16+l]=W[g];si[(base+f)*16+l]=c;used[g]=1;f++;cov++;}}}}
 long n2=0; for(int r=0;r<R;r++){rp2[r]=n2;for(int c=0;c<C;c++){size_t g=(size_t)r*C+c;if(W[g]!=0&&!used[g]){ci2[n2]=c;v2[n2]=W[g];n2++;}}}rp2[R]=n2;
 printf("dens %.2f K=%d covered %.2f eff %.2f bytes/nnz %.2f (csr 6.0)\n",dens,K,cov/(double)n,cov/(nslots*16.0),(nslots*16*5.0+n2*6.0)/n);
 float*y0=malloc(R*4),*y1=malloc(R*4),*yd=malloc(R*4);
 double ts[5][41];
 for(int it=0;it<41;it++){double t;
  flush();t=now();for(int r=0;r<R;r++){__m512 a=_mm512_setzero_ps();for(int c=0;c<C;c+=16)a=_mm512_fmadd_ps(_mm512_loadu_ps(W+(size_t)r*C+c),_mm512_loadu_ps(x+c),a);yd[r]=_mm512_reduce_add_ps(a);}ts[0][it]=now()-t;
  flush();t=now();csr(rp,ci,v,x,y0);ts[1][it]=now()-t;
  flush();t=now();hk(K,sv,si,rp2,ci2,v2,x,y1);ts[2][it]=now()-t;
  t=now();hk(K,sv,si,rp2,ci2,v2,x,y1);ts[3][it]=now()-t;
  csr(rp,ci,v,x,y0);t=now();csr(rp,ci,v,x,y0);ts[4][it]=now()-t;}
 double e=0;for(int r=0;r<R;r++){double d=fabs(y0[r]-y1[r]);if(d>e)e=d;}
 const char*nm[5]={"dense cold","csr cold","head+csr cold","head+csr warm","csr warm"};
 for(int k=0;k<5;k++){qsort(ts[k],41,8,cmpd);printf("%-14s %.3f ms [%.3f-%.3f] ratio vs dense %.2f\n",nm[k],ts[k][20]*1e3,ts[k][10]*1e3,ts[k][30]*1e3,ts[0][20]/ts[k][20]);}
 printf("maxerr %g\n",e);}
