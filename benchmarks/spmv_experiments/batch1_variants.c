/* Batch-1 4096x4096 SpMV layouts A/B against dense and each other, each call after a 64 MB sweep
 * (weights from DRAM): CSR with scalar-insert gathers (the runtime kernel's way), bitmap blocks of
 * 16 columns with vexpandps (load and register forms), bitmap + 5-bit codes, CSR with masked
 * broadcasts, vpgatherdps, scalar CSR. gcc -O3 -march=native batch1_variants.c -o b1 -lm && ./b1 0.1 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <math.h>
#define R 4096
#define C 4096
static double now(){struct timespec t;clock_gettime(CLOCK_THREAD_CPUTIME_ID,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static float *flushbuf;
static void flush(){ volatile float s=0; for(long i=0;i<16L*1024*1024;i+=16) s+=flushbuf[i]; }
/* CSR with scalar-insert gather (current) */
static inline __m512 xg16(const float*xp,const uint16_t*e){
 __m128 q0=_mm_setr_ps(xp[e[0]],xp[e[1]],xp[e[2]],xp[e[3]]);
 __m128 q1=_mm_setr_ps(xp[e[4]],xp[e[5]],xp[e[6]],xp[e[7]]);
 __m128 q2=_mm_setr_ps(xp[e[8]],xp[e[9]],xp[e[10]],xp[e[11]]);
 __m128 q3=_mm_setr_ps(xp[e[12]],xp[e[13]],xp[e[14]],xp[e[15]]);
 return _mm512_insertf32x4(_mm512_insertf32x4(_mm512_insertf32x4(_mm512_castps128_ps512(q0),q1,1),q2,2),q3,3);}
void csr(const int64_t*rp,const uint16_t*ci,const float*v,const float*x,float*y){
 for(int r=0;r<R;r++){__m512 a0=_mm512_setzero_ps(),a1=a0;float t=0;int64_t i=rp[r],b=rp[r+1];
  for(;i+32<=b;i+=32){a0=_mm512_fmadd_ps(_mm512_loadu_ps(v+i),xg16(x,ci+i),a0);a1=_mm512_fmadd_ps(_mm512_loadu_ps(v+i+16),xg16(x,ci+i+16),a1);}
  for(;i+16<=b;i+=16)a0=_mm512_fmadd_ps(_mm512_loadu_ps(v+i),xg16(x,ci+i),a0);
  for(;i<b;i++)t+=v[i]*x[ci[i]];
  y[r]=_mm512_reduce_add_ps(_mm512_add_ps(a0,a1))+t;}}
/* bitmap blocks of 16 columns, values compressed per row, expandload */
void bm(const uint16_t*mask,const float*v,const int64_t*rp,const float*x,float*y){
 for(int r=0;r<R;r++){const float*vp=v+rp[r];const uint16_t*m=mask+(int64_t)r*(C/16);
  __m512 a0=_mm512_setzero_ps(),a1=a0,a2=a0,a3=a0;
  for(int b=0;b<C/16;b+=4){
   __mmask16 k0=m[b],k1=m[b+1],k2=m[b+2],k3=m[b+3];
   __m512 w0=_mm512_maskz_expandloadu_ps(k0,vp); vp+=__builtin_popcount(k0);
   __m512 w1=_mm512_maskz_expandloadu_ps(k1,vp); vp+=__builtin_popcount(k1);
   __m512 w2=_mm512_maskz_expandloadu_ps(k2,vp); vp+=__builtin_popcount(k2);
   __m512 w3=_mm512_maskz_expandloadu_ps(k3,vp); vp+=__builtin_popcount(k3);
   a0=_mm512_fmadd_ps(w0,_mm512_loadu_ps(x+b*16),a0);
   a1=_mm512_fmadd_ps(w1,_mm512_loadu_ps(x+b*16+16),a1);
   a2=_mm512_fmadd_ps(w2,_mm512_loadu_ps(x+b*16+32),a2);
   a3=_mm512_fmadd_ps(w3,_mm512_loadu_ps(x+b*16+48),a3);}
  y[r]=_mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0,a1),_mm512_add_ps(a2,a3)));}}
/* bitmap, expand in register: load 16 values unaligned then vexpandps reg form */
void bm2(const uint16_t*mask,const float*v,const int64_t*rp,const float*x,float*y){
 for(int r=0;r<R;r++){const float*vp=v+rp[r];const uint16_t*m=mask+(int64_t)r*(C/16);
  __m512 a0=_mm512_setzero_ps(),a1=a0,a2=a0,a3=a0;
  for(int b=0;b<C/16;b+=4){
   __mmask16 k0=m[b],k1=m[b+1],k2=m[b+2],k3=m[b+3];
   __m512 w0=_mm512_maskz_expand_ps(k0,_mm512_loadu_ps(vp)); vp+=__builtin_popcount(k0);
   __m512 w1=_mm512_maskz_expand_ps(k1,_mm512_loadu_ps(vp)); vp+=__builtin_popcount(k1);
   __m512 w2=_mm512_maskz_expand_ps(k2,_mm512_loadu_ps(vp)); vp+=__builtin_popcount(k2);
   __m512 w3=_mm512_maskz_expand_ps(k3,_mm512_loadu_ps(vp)); vp+=__builtin_popcount(k3);
   a0=_mm512_fmadd_ps(w0,_mm512_loadu_ps(x+b*16),a0);
   a1=_mm512_fmadd_ps(w1,_mm512_loadu_ps(x+b*16+16),a1);
   a2=_mm512_fmadd_ps(w2,_mm512_loadu_ps(x+b*16+32),a2);
   a3=_mm512_fmadd_ps(w3,_mm512_loadu_ps(x+b*16+48),a3);}
  y[r]=_mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0,a1),_mm512_add_ps(a2,a3)));}}
/* bitmap + 5-bit codes as bytes */
void bmc(const uint16_t*mask,const uint8_t*cd,const int64_t*rp,const float*cent,const float*x,float*y){
 __m512 c0=_mm512_loadu_ps(cent),c1=_mm512_loadu_ps(cent+16);
 for(int r=0;r<R;r++){const uint8_t*cp=cd+rp[r];const uint16_t*m=mask+(int64_t)r*(C/16);
  __m512 a0=_mm512_setzero_ps(),a1=a0,a2=a0,a3=a0;
  for(int b=0;b<C/16;b+=4){
   __mmask16 k[4]={m[b],m[b+1],m[b+2],m[b+3]}; __m512 w[4];
   for(int u=0;u<4;u++){__m512i c=_mm512_maskz_expand_epi32(k[u],_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)cp))); cp+=__builtin_popcount(k[u]);
     w[u]=_mm512_maskz_permutex2var_ps(k[u],c0,c,c1);}
   a0=_mm512_fmadd_ps(w[0],_mm512_loadu_ps(x+b*16),a0);
   a1=_mm512_fmadd_ps(w[1],_mm512_loadu_ps(x+b*16+16),a1);
   a2=_mm512_fmadd_ps(w[2],_mm512_loadu_ps(x+b*16+32),a2);
   a3=_mm512_fmadd_ps(w[3],_mm512_loadu_ps(x+b*16+48),a3);}
  y[r]=_mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0,a1),_mm512_add_ps(a2,a3)));}}

static inline __m512 xg16b(const float*xp,const uint16_t*e){
 uint64_t a,b,c,d; memcpy(&a,e,8);memcpy(&b,e+4,8);memcpy(&c,e+8,8);memcpy(&d,e+12,8);
 __m128 q0=_mm_setr_ps(xp[a&0xffff],xp[(a>>16)&0xffff],xp[(a>>32)&0xffff],xp[a>>48]);
 __m128 q1=_mm_setr_ps(xp[b&0xffff],xp[(b>>16)&0xffff],xp[(b>>32)&0xffff],xp[b>>48]);
 __m128 q2=_mm_setr_ps(xp[c&0xffff],xp[(c>>16)&0xffff],xp[(c>>32)&0xffff],xp[c>>48]);
 __m128 q3=_mm_setr_ps(xp[d&0xffff],xp[(d>>16)&0xffff],xp[(d>>32)&0xffff],xp[d>>48]);
 return _mm512_insertf32x4(_mm512_insertf32x4(_mm512_insertf32x4(_mm512_castps128_ps512(q0),q1,1),q2,2),q3,3);}
static inline __m512 xg16g(const float*xp,const uint16_t*e){
 return _mm512_i32gather_ps(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)e)),xp,4);}
void csr2(const int64_t*rp,const uint16_t*ci,const float*v,const float*x,float*y){
 for(int r=0;r<R;r++){__m512 a0=_mm512_setzero_ps(),a1=a0;float t=0;int64_t i=rp[r],b=rp[r+1];
  for(;i+32<=b;i+=32){a0=_mm512_fmadd_ps(_mm512_loadu_ps(v+i),xg16b(x,ci+i),a0);a1=_mm512_fmadd_ps(_mm512_loadu_ps(v+i+16),xg16b(x,ci+i+16),a1);}
  for(;i+16<=b;i+=16)a0=_mm512_fmadd_ps(_mm512_loadu_ps(v+i),xg16b(x,ci+i),a0);
  for(;i<b;i++)t+=v[i]*x[ci[i]];
  y[r]=_mm512_reduce_add_ps(_mm512_add_ps(a0,a1))+t;}}
void csrg(const int64_t*rp,const uint16_t*ci,const float*v,const float*x,float*y){
 for(int r=0;r<R;r++){__m512 a0=_mm512_setzero_ps(),a1=a0;float t=0;int64_t i=rp[r],b=rp[r+1];
  for(;i+32<=b;i+=32){a0=_mm512_fmadd_ps(_mm512_loadu_ps(v+i),xg16g(x,ci+i),a0);a1=_mm512_fmadd_ps(_mm512_loadu_ps(v+i+16),xg16g(x,ci+i+16),a1);}
  for(;i+16<=b;i+=16)a0=_mm512_fmadd_ps(_mm512_loadu_ps(v+i),xg16g(x,ci+i),a0);
  for(;i<b;i++)t+=v[i]*x[ci[i]];
  y[r]=_mm512_reduce_add_ps(_mm512_add_ps(a0,a1))+t;}}
/* scalar CSR (4 accumulators) */
void csrs(const int64_t*rp,const uint16_t*ci,const float*v,const float*x,float*y){
 for(int r=0;r<R;r++){float s0=0,s1=0,s2=0,s3=0;int64_t i=rp[r],b=rp[r+1];
  for(;i+4<=b;i+=4){s0+=v[i]*x[ci[i]];s1+=v[i+1]*x[ci[i+1]];s2+=v[i+2]*x[ci[i+2]];s3+=v[i+3]*x[ci[i+3]];}
  for(;i<b;i++)s0+=v[i]*x[ci[i]];
  y[r]=(s0+s1)+(s2+s3);}}

static inline __m512 xg16m(const float*xp,const uint16_t*e){
 __m512 a=_mm512_setzero_ps(),b=a,c=a,d=a;
#define MB(v,l,j) v=_mm512_mask_broadcastss_ps(v,(__mmask16)(1u<<(l)),_mm_load_ss(xp+e[j]))
 MB(a,0,0);MB(b,1,1);MB(c,2,2);MB(d,3,3);MB(a,4,4);MB(b,5,5);MB(c,6,6);MB(d,7,7);
 MB(a,8,8);MB(b,9,9);MB(c,10,10);MB(d,11,11);MB(a,12,12);MB(b,13,13);MB(c,14,14);MB(d,15,15);
 return _mm512_add_ps(_mm512_add_ps(a,b),_mm512_add_ps(c,d));}
void csrm(const int64_t*rp,const uint16_t*ci,const float*v,const float*x,float*y){
 for(int r=0;r<R;r++){__m512 a0=_mm512_setzero_ps(),a1=a0;float t=0;int64_t i=rp[r],b=rp[r+1];
  for(;i+32<=b;i+=32){a0=_mm512_fmadd_ps(_mm512_loadu_ps(v+i),xg16m(x,ci+i),a0);a1=_mm512_fmadd_ps(_mm512_loadu_ps(v+i+16),xg16m(x,ci+i+16),a1);}
  for(;i+16<=b;i+=16)a0=_mm512_fmadd_ps(_mm512_loadu_ps(v+i),xg16m(x,ci+i),a0);
  for(;i<b;i++)t+=v[i]*x[ci[i]];
  y[r]=_mm512_reduce_add_ps(_mm512_add_ps(a0,a1))+t;}}
void dense(const float*W,const float*x,float*y){for(int r=0;r<R;r++){__m512 a0=_mm512_setzero_ps(),a1=a0,a2=a0,a3=a0;const float*w=W+(int64_t)r*C;
 for(int c=0;c<C;c+=64){a0=_mm512_fmadd_ps(_mm512_loadu_ps(w+c),_mm512_loadu_ps(x+c),a0);a1=_mm512_fmadd_ps(_mm512_loadu_ps(w+c+16),_mm512_loadu_ps(x+c+16),a1);a2=_mm512_fmadd_ps(_mm512_loadu_ps(w+c+32),_mm512_loadu_ps(x+c+32),a2);a3=_mm512_fmadd_ps(_mm512_loadu_ps(w+c+48),_mm512_loadu_ps(x+c+48),a3);}
 y[r]=_mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0,a1),_mm512_add_ps(a2,a3)));}}
int cmpd(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
int main(int argc,char**argv){double dens=argc>1?atof(argv[1]):0.1;srand(1);
 flushbuf=malloc(64L<<20);for(long i=0;i<16L<<20;i++)flushbuf[i]=1;
 float*W=calloc((size_t)R*C,4);float*x=malloc(C*4);for(int i=0;i<C;i++)x[i]=rand()/(float)RAND_MAX-0.5f;
 float cent[32];for(int i=0;i<32;i++)cent[i]=i*0.01f-0.16f;
 uint8_t*code=calloc((size_t)R*C,1);
 int64_t*rp=malloc((R+1)*8);uint16_t*ci=malloc((size_t)R*C*2);float*v=malloc((size_t)R*C*4+64);uint8_t*cv=malloc((size_t)R*C+64);
 uint16_t*mask=calloc((size_t)R*C/16,2);int64_t n=0;
 for(int r=0;r<R;r++){rp[r]=n;for(int c=0;c<C;c++){if(rand()<dens*RAND_MAX){int k=rand()%32;code[(size_t)r*C+c]=k;float w=cent[k];W[(size_t)r*C+c]=w;ci[n]=c;v[n]=w;cv[n]=k;mask[((size_t)r*C+c)/16]|=1u<<(c%16);n++;}}}rp[R]=n;
 float*y0=malloc(R*4),*y1=malloc(R*4);printf("nnz %ld\n",n);
 double ts[9][31];
 for(int it=0;it<31;it++){double t;
  flush();t=now();dense(W,x,y0);ts[0][it]=now()-t;
  flush();t=now();csr(rp,ci,v,x,y1);ts[1][it]=now()-t;
  flush();t=now();bm(mask,v,rp,x,y1);ts[2][it]=now()-t;
  flush();t=now();bm2(mask,v,rp,x,y1);ts[3][it]=now()-t;
  flush();t=now();bmc(mask,cv,rp,cent,x,y1);ts[4][it]=now()-t;
  t=now();csr(rp,ci,v,x,y1);ts[5][it]=now()-t;
  flush();t=now();csrm(rp,ci,v,x,y1);ts[6][it]=now()-t;
  flush();t=now();csrg(rp,ci,v,x,y1);ts[7][it]=now()-t;
  flush();t=now();csrs(rp,ci,v,x,y1);ts[8][it]=now()-t;
 }
 double e=0;for(int r=0;r<R;r++){double d=fabsf(y0[r]-y1[r]);if(d>e)e=d;}
 const char*nm[9]={"dense","csr","bm-expandload","bm-expandreg","bm-codes","csr warm","csr maskbcast","csr vgather","csr scalar"};
 for(int k=0;k<9;k++){qsort(ts[k],31,8,cmpd);printf("%-20s %.3f ms  (%.2f ns/nnz) ratio %.2f\n",nm[k],ts[k][15]*1e3,ts[k][15]*1e9/n,ts[0][15]/ts[k][15]);}
 printf("maxerr %g\n",e);}
