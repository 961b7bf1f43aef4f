/* SELL-16 with 32-column panels: 16 rows in the lanes, the input panel in two registers,
 * vpermt2ps instead of gathers; padded slots cost bytes. gcc -O3 -march=native sell_permute.c
 * -o sell -lm && ./sell 0.1 */
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
/* SELL-16 panel-32, branchy per-panel loop */
void sell(const uint8_t*ns,const float*vals,const uint8_t*idx,const float*x,float*y){
 const float*vp=vals;const uint8_t*ip=idx;
 for(int q=0;q<R/L;q++){__m512 a0=_mm512_setzero_ps(),a1=a0;
  for(int p=0;p<NP;p++){__m512 x0=_mm512_loadu_ps(x+p*PW),x1=_mm512_loadu_ps(x+p*PW+16);int n=ns[q*NP+p];int s=0;
   for(;s+2<=n;s+=2){a0=_mm512_fmadd_ps(_mm512_loadu_ps(vp),_mm512_permutex2var_ps(x0,_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)ip)),x1),a0);
     a1=_mm512_fmadd_ps(_mm512_loadu_ps(vp+16),_mm512_permutex2var_ps(x0,_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(ip+16))),x1),a1);vp+=32;ip+=32;}
   if(s<n){a0=_mm512_fmadd_ps(_mm512_loadu_ps(vp),_mm512_permutex2var_ps(x0,_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)ip)),x1),a0);vp+=16;ip+=16;}}
  _mm512_storeu_ps(y+q*L,_mm512_add_ps(a0,a1));}}
/* flat: per slot a panel id */
void sellf(const int64_t*sp,const uint16_t*pid,const float*vals,const uint8_t*idx,const float*x,float*y){
 for(int q=0;q<R/L;q++){__m512 a0=_mm512_setzero_ps(),a1=a0;int64_t s=sp[q],e=sp[q+1];
  for(;s+2<=e;s+=2){const float*xa=x+pid[s]*PW,*xb=x+pid[s+1]*PW;
   a0=_mm512_fmadd_ps(_mm512_loadu_ps(vals+s*16),_mm512_permutex2var_ps(_mm512_loadu_ps(xa),_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(idx+s*16))),_mm512_loadu_ps(xa+16)),a0);
   a1=_mm512_fmadd_ps(_mm512_loadu_ps(vals+s*16+16),_mm512_permutex2var_ps(_mm512_loadu_ps(xb),_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(idx+s*16+16))),_mm512_loadu_ps(xb+16)),a1);}
  if(s<e){const float*xa=x+pid[s]*PW;a0=_mm512_fmadd_ps(_mm512_loadu_ps(vals+s*16),_mm512_permutex2var_ps(_mm512_loadu_ps(xa),_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(idx+s*16))),_mm512_loadu_ps(xa+16)),a0);}
  _mm512_storeu_ps(y+q*L,_mm512_add_ps(a0,a1));}}
int cmpd(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
int main(int argc,char**argv){double dens=argc>1?atof(argv[1]):0.1;srand(1);
 flushbuf=malloc(64L<<20);for(long i=0;i<16L<<20;i++)flushbuf[i]=1;
 float*W=calloc((size_t)R*C,4);float*x=malloc(C*4);for(int i=0;i<C;i++)x[i]=rand()/(float)RAND_MAX-0.5f;
 for(size_t i=0;i<(size_t)R*C;i++) if(rand()<dens*RAND_MAX) W[i]=rand()/(float)RAND_MAX-0.5f;
 /* build sell */
 uint8_t*ns=calloc(R/L*NP,1); size_t cap=(size_t)R*C; float*vals=calloc(cap,4); uint8_t*idx=calloc(cap,1); uint16_t*pid=malloc(cap/16*2); int64_t*sp=malloc((R/L+1)*8);
 size_t slot=0; long nnz=0;
 for(int q=0;q<R/L;q++){sp[q]=slot;for(int p=0;p<NP;p++){int cnt[L]={0};int mx=0;
   for(int l=0;l<L;l++){for(int c=0;c<PW;c++) if(W[(size_t)(q*L+l)*C+p*PW+c]!=0) cnt[l]++; if(cnt[l]>mx)mx=cnt[l]; nnz+=cnt[l];}
   ns[q*NP+p]=mx; int fill[L]={0};
   for(int l=0;l<L;l++) for(int c=0;c<PW;c++){float w=W[(size_t)(q*L+l)*C+p*PW+c]; if(w!=0){size_t s=slot+fill[l]++; vals[s*16+l]=w; idx[s*16+l]=c;}}
   for(int s=0;s<mx;s++) pid[slot+s]=p; slot+=mx;}}
 sp[R/L]=slot;
 printf("nnz %ld slots %zu eff %.2f bytes/nnz %.2f\n",nnz,slot,nnz/(slot*16.0),slot*16*5.0/nnz);
 float*y0=malloc(R*4),*y1=malloc(R*4),*y2=malloc(R*4);
 double ts[5][31];
 for(int it=0;it<31;it++){double t;
  for(int r=0;r<R;r++){float s=0;for(int c=0;c<C;c++)s+=W[(size_t)r*C+c]*x[c];y0[r]=s;}
  flush();t=now();sell(ns,vals,idx,x,y1);ts[0][it]=now()-t;
  flush();t=now();sellf(sp,pid,vals,idx,x,y2);ts[1][it]=now()-t;
  t=now();sell(ns,vals,idx,x,y1);ts[2][it]=now()-t;
  t=now();sellf(sp,pid,vals,idx,x,y2);ts[3][it]=now()-t;
 }
 double e=0;for(int r=0;r<R;r++){double d=fabs(y0[r]-y1[r])+fabs(y0[r]-y2[r]);if(d>e)e=d;}
 const char*nm[4]={"sell cold","sell-flat cold","sell warm","sell-flat warm"};
 for(int k=0;k<4;k++){qsort(ts[k],31,8,cmpd);printf("%-20s %.3f ms  (%.2f ns/nnz)\n",nm[k],ts[k][15]*1e3,ts[k][15]*1e9/nnz);}
 printf("maxerr %g\n",e);}
